import json

import pytest

from efficientft.errors import ConfigError
from efficientft.tasks import DataOptions, get_task


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_csv_classification_with_two_text_columns(tmp_path):
    train = _write(tmp_path, "train.csv", 'q,a,label\n"hello, world",x,yes\nb,y,no\nc,z,yes\n')
    dev = _write(tmp_path, "dev.csv", "q,a,label\nd,w,no\n")
    task = get_task("mine", {"train": train, "dev": dev, "text_columns": "q,a"})
    assert task.name == "mine" and task.num_labels == 2 and task.label_names == ("no", "yes")
    ex = task.load("train", DataOptions())
    assert ex.text_a == ["hello, world", "b", "c"] and ex.text_b == ["x", "y", "z"] and ex.labels == [1, 0, 1]
    assert task.load("dev", DataOptions()).labels == [0]


def test_numeric_labels_sort_numerically(tmp_path):
    lines = "text\tlabel\n" + "".join(f"t{i}\t{lab}\n" for i, lab in enumerate([10, 2, 1]))
    train = _write(tmp_path, "train.tsv", lines)
    task = get_task("custom", {"train": train, "dev": train})
    assert task.label_names == ("1", "2", "10")
    assert task.load("train", DataOptions()).labels == [2, 1, 0]


def test_jsonl_regression(tmp_path):
    rows = [{"s": "a", "y": 0.5}, {"s": "b", "y": 2}]
    train = _write(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows))
    task = get_task("custom", {"train": train, "dev": train, "text_columns": ["s"], "label_column": "y",
                               "type": "regression"})
    assert task.is_regression and task.metrics == ("pearson", "spearman")
    assert task.load("dev", DataOptions()).labels == [0.5, 2.0]


def test_errors(tmp_path):
    train = _write(tmp_path, "train.csv", "text,label\na,0\nb,1\n")
    with pytest.raises(ConfigError, match=r"column\(s\) \['sentence'\] not found; the file has: text, label"):
        get_task("custom", {"train": train, "dev": train, "text_columns": "sentence"})
    dev = _write(tmp_path, "dev.csv", "text,label\na,7\n")
    task = get_task("custom", {"train": train, "dev": dev})
    with pytest.raises(ConfigError, match=r"label '7' at .*dev.csv:2 is not in the task's label set"):
        task.load("dev", DataOptions())
    with pytest.raises(ConfigError, match="does not exist"):
        get_task("custom", {"train": str(tmp_path / "nope.csv"), "dev": train})
    bad = _write(tmp_path, "bad.jsonl", '{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2 is not a JSON object"):
        get_task("custom", {"train": bad, "dev": bad})
    with pytest.raises(ConfigError, match="unknown data format '.xlsx'"):
        get_task("custom", {"train": _write(tmp_path, "d.xlsx", "x"), "dev": train})


def test_empty_split_is_an_error_before_training(tmp_path, tiny_bert):
    from efficientft.config import RunConfig
    from efficientft.train import prepare

    train = _write(tmp_path, "train.csv", "text,label\na,x\nb,y\n")
    dev = _write(tmp_path, "dev.csv", "text,label\n")
    cfg = RunConfig(task="custom", custom={"train": train, "dev": dev}, model=str(tiny_bert), steps=1,
                    progress=False)
    with pytest.raises(ConfigError, match="the dev split of task 'custom' is empty"):
        prepare(cfg)
    with pytest.raises(ConfigError, match=r"train_empty.csv has no examples \(a header line only"):
        get_task("custom", {"train": _write(tmp_path, "train_empty.csv", "text,label\n"), "dev": train})
