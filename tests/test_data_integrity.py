"""The user's files and ``custom:`` specs: each defect is one ConfigError naming the file and line (issue 11)."""

import json
import re

import pytest

from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import resolve
from efficientft.tasks import DataOptions, get_task
from efficientft.tasks.base import read_table


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(p)


def _jsonl(tmp_path, name, rows):
    return _write(tmp_path, name, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _task(train, dev=None, **spec):
    task = get_task("custom", {"train": train, "dev": dev or train, **spec})
    task.load("train", DataOptions())
    task.load("dev", DataOptions())
    return task


GOOD = "text,label\na,x\nb,y\n"


@pytest.mark.parametrize("name,data,msg", [
    # a comma in unquoted text used to shift the label into the wrong column
    ("shift.csv", "text,label\nhello, world,x\nb,y\n",
     r"shift.csv:2: this row has 3 fields but the header has 2 \(text, label\); a text field that holds a comma "
     r"must be quoted"),
    ("short.tsv", "text\tlabel\na\tx\nb\n", r"short.tsv:3: this row has 1 fields but the header has 2"),
    ("quote.csv", 'text,label\n"open,x\nb,y\nc,x\n', r"quote.csv:2: .*a quote opened on this line is never closed"),
    ("dup.csv", "text,label,text\na,x,b\nb,y,c\n",
     r"dup.csv:1: column 'text' appears more than once in the header \(text, label, text\)"),
    ("mixed.csv", "text,label\na,1\nb,1.0\nc,0\n",
     r"label '1.0' at .*mixed.csv:3 and label '1' at .*mixed.csv:2 spell the same number"),
    ("bool.csv", "text,label\na,1\nb,true\nc,0\n", r"label 'true' at .*bool.csv:3 and label '1' at .*:2"),
    ("empty_label.csv", "text,label\na,x\nb,\nc,y\n", r"empty_label.csv:3: the label is empty"),
    ("empty_text.csv", "text,label\na,x\n  ,y\n", r"empty_text.csv:3: the text field 'text' is empty"),
    ("one.csv", "text,label\na,x\nb,x\n",
     r"one.csv: the label column 'label' has only one distinct label \('x'\); classification needs at least two"),
    ("latin1.csv", "text,label\ncaf\xe9,x\nb,y\n".encode("latin-1"),
     r"latin1.csv:2: not UTF-8 \(byte 0xe9 at byte offset 14 .*save the file as UTF-8"),
    ("utf16.csv", GOOD.encode("utf-16"), r"utf16.csv: the file is UTF-16 .*save it as UTF-8"),
    ("binary.csv", b"PK\x03\x04\x00\x00binary", r"binary.csv:1: a NUL byte at byte offset 4: this is binary data"),
])
def test_bad_table_files(tmp_path, name, data, msg):
    with pytest.raises(ConfigError, match=msg):
        _task(_write(tmp_path, name, data))


@pytest.mark.parametrize("rows,msg", [
    ([{"text": "a", "label": 1}, {"text": "b", "label": None}], r"bad.jsonl:2: the label is null"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": 0}],
     r"label '1.0' at .*bad.jsonl:2 and label '1' at .*bad.jsonl:1 spell the same number"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": True}, {"text": "c", "label": 0}],
     r"label 'true' at .*:2 and label '1' at .*:1 spell the same number"),
    ([{"text": "a", "label": "x"}, {"text": 7, "label": "y"}], r"bad.jsonl:2: the text field 'text' is the number 7"),
    ([{"text": "a", "label": "x"}, {"text": ["b"], "label": "y"}], r"bad.jsonl:2: the text field 'text' is a list"),
    ([{"text": "a", "label": "x"}, {"text": None, "label": "y"}], r"bad.jsonl:2: the text field 'text' is null"),
    ([{"text": "a", "label": "x"}, {"label": "y"}, {"text": "c", "label": "y"}],
     r"bad.jsonl:2: no 'text' field; every example needs it"),
    ([{"text": "a", "label": "x"}, {"text": "b", "label": ["y"]}], r"bad.jsonl:2: the label is a list of 1 item"),
    ([{"text": "a", "label": "x"}, "[1, 2]"], r"bad.jsonl:2 is a list of 2 item\(s\), not a JSON object"),
    ([{"text": "a", "label": "x"}, "1" * 5000], r"bad.jsonl:2 cannot be read as JSON"),
])
def test_bad_jsonl_files(tmp_path, rows, msg):
    with pytest.raises(ConfigError, match=msg):
        _task(_jsonl(tmp_path, "bad.jsonl", rows))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_regression_labels(tmp_path, value):
    train = _write(tmp_path, "reg.jsonl", f'{{"text": "a", "y": 0.5}}\n{{"text": "b", "y": {value}}}\n')
    with pytest.raises(ConfigError, match=r"label '.*' at .*reg.jsonl:2 is not a finite number"):
        _task(train, label_column="y", type="regression")
    csv = _write(tmp_path, "reg.csv", f"text,y\na,0.5\nb,{value.lower()}\n")
    with pytest.raises(ConfigError, match=r"reg.csv:3 is not a finite number"):
        _task(csv, label_column="y", type="regression")


def test_regression_label_that_is_a_boolean(tmp_path):
    train = _jsonl(tmp_path, "reg.jsonl", [{"text": "a", "y": 0.5}, {"text": "b", "y": True}])
    with pytest.raises(ConfigError, match=r"reg.jsonl:2: the label is the boolean true; a regression label is a number"):
        _task(train, label_column="y", type="regression")


def test_dev_label_spelled_differently_or_unseen(tmp_path):
    train = _write(tmp_path, "train.csv", "text,label\na,0\nb,1\n")
    dev = _write(tmp_path, "dev.csv", "text,label\na,1.0\n")
    with pytest.raises(ConfigError, match=r"label '1.0' at .*dev.csv:2 spells the same number as the label '1'"):
        _task(train, dev)
    dev = _write(tmp_path, "dev2.csv", "text,label\na,2\n")
    with pytest.raises(ConfigError, match=r"label '2' at .*dev2.csv:2 is not in the task's label set; accepted "
                                          r"labels: 0, 1"):
        _task(train, dev)


def test_bom_and_clean_files_still_read(tmp_path):
    task = _task(_write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\n\"a, quoted\",x\nb,y\n"))
    ex = task.load("train", DataOptions())
    assert ex.text_a == ["a, quoted", "b"] and ex.labels == [0, 1]
    j = _task(_write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n'))
    assert j.label_names == ("0", "1") and j.load("train", DataOptions()).labels == [1, 0]


def test_hostile_paths_do_not_block(tmp_path):
    import os

    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)  # opening a FIFO for reading blocks until a writer comes: it must be refused, not opened
    with pytest.raises(ConfigError, match=r"train.csv' is not a regular file \(a folder, pipe or device\)"):
        _task(str(fifo))
    with pytest.raises(ConfigError, match=r"is not a regular file"):
        read_table(tmp_path)


def test_a_huge_unquoted_field_is_one_error(tmp_path):
    from efficientft.textfile import MAX_FIELD_CHARS

    big = _write(tmp_path, "big.csv", 'text,label\na,x\n"' + "z" * (MAX_FIELD_CHARS + 10) + '",y\n')
    with pytest.raises(ConfigError, match=r"big.csv:3: cannot be read as CSV \(field larger than field limit"):
        _task(big)


@pytest.mark.parametrize("spec,msg", [
    ({"labels": ["x"]}, r"custom data labels lists 1 distinct label\(s\); classification needs at least two"),
    ({"labels": ["1", 1.0]}, r"label '1.0' at custom data labels, item 2 and label '1' .* spell the same number"),
    ({"labels": [True, False]}, r"labels: item 1 is the boolean true \(YAML reads yes/no/on/off"),
    ({"labels": ["x", " "]}, r"custom data labels: item 2 is empty; a label needs a name"),
    ({"labels": "xy"}, r"custom data labels must be a list of the class labels, got 'xy'"),
    ({"type": "regression", "labels": ["a", "b"]}, r"a regression task has none"),
    ({"metrics": ["acuracy"]}, r"unknown metric 'acuracy'. Did you mean 'accuracy'\? Accepted for classification: "
                               r"accuracy, f1, mcc"),
    ({"metrics": ["pearson"]}, r"metric 'pearson' does not fit a classification task; accepted for classification: "
                               r"accuracy, f1, mcc"),
    ({"type": "regression", "metrics": "mcc"}, r"metric 'mcc' does not fit a regression task; accepted for "
                                               r"regression: pearson, spearman"),
    ({"lables": ["x", "y"]}, r"unknown key 'lables' in custom data. Did you mean 'labels'\? Accepted keys: train, "),
    ({"text_columns": 3}, r"custom data text_columns must be a name or a list of names, got the number 3"),
    ({"text_columns": "a,b,c"}, r"one or two text columns, got 3: a, b, c"),
    ({"type": "regresion"}, r"custom data type 'regresion' is not known; accepted: classification, regression"),
    ({"label_column": ["y"]}, r"custom data label_column must be a non-empty string, got a list of 1 item"),
])
def test_bad_specs_fail_on_construction(tmp_path, spec, msg):
    train = _write(tmp_path, "t.csv", GOOD)
    full = {"train": train, "dev": train, **spec}
    with pytest.raises(ConfigError, match=msg):
        get_task("custom", full)
    with pytest.raises(ConfigError, match=msg):  # resolving the run refuses it before a run key is computed
        resolve(RunConfig(task="custom", custom=full))


def test_f1_needs_two_classes(tmp_path):
    train = _write(tmp_path, "t.csv", "text,label\na,x\nb,y\nc,z\n")
    with pytest.raises(ConfigError, match=r"metric 'f1' scores the positive class of a two-class task; this task "
                                          r"has 3 labels \(x, y, z\)"):
        get_task("custom", {"train": train, "dev": train, "metrics": ["accuracy", "f1"]})


def test_declared_labels_and_metrics_still_work(tmp_path):
    train = _write(tmp_path, "t.csv", "text,label\na,1\nb,0\n")
    task = _task(train, labels=[0, 1], metrics="mcc,accuracy")
    assert task.label_names == ("0", "1") and task.metrics == ("mcc", "accuracy") and task.main_metric == "mcc"
    assert task.load("train", DataOptions()).labels == [1, 0]


def test_glue_reader_says_its_encoding_problem(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\xff\tb\tentailment\n")
    with pytest.raises(ConfigError, match=r"RTE/train.tsv:2: not UTF-8 \(byte 0xff at byte offset 35"):
        get_task("rte").load("train", DataOptions(str(tmp_path)))


def test_glue_regression_rejects_nan_targets(tmp_path):
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "train.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\tnan\n")
    with pytest.raises(ConfigError, match=r"label 'nan' at .*STS-B/train.tsv:3 is not a finite number"):
        get_task("stsb").load("train", DataOptions(str(tmp_path)))


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    train = _write(tmp_path, "train.csv", "text,label\nhello, world,x\nb,y\n")
    code = main(["run", "--train-file", train, "--eval-file", train, "--model", str(tmp_path / "none"),
                 "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert re.fullmatch(r"eft run: error: .*train.csv:2: this row has 3 fields but the header has 2 .*", err), err


@pytest.mark.parametrize("spec,msg", [
    ({"text_columns": "label"}, r"column 'label' is both a text column and the label column; the model would read "
                                r"the answer"),
    ({"text_columns": ["text", "text"]}, r"text_columns names 'text' twice"),
])
def test_a_column_has_one_role(tmp_path, spec, msg):
    train = _write(tmp_path, "t.csv", GOOD)
    with pytest.raises(ConfigError, match=msg):
        get_task("custom", {"train": train, "dev": train, **spec})
    with pytest.raises(ConfigError, match=msg):
        resolve(RunConfig(task="custom", custom={"train": train, "dev": train, **spec}))


def test_jsonl_duplicate_keys(tmp_path):
    train = _write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "label": "x"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:2: the key 'label' appears more than once in this object"):
        _task(train)


def test_a_tab_separated_file_named_csv(tmp_path):
    train = _write(tmp_path, "tabs.csv", "text\tlabel\na\tx\nb\ty\n")
    with pytest.raises(ConfigError, match=r"tabs.csv: column\(s\) \['text', 'label'\] not found; .* The header looks "
                                          r"tab-separated: name the file .tsv"):
        _task(train)


def test_jsonl_text_with_a_lone_surrogate_escape(tmp_path):
    train = _write(tmp_path, "s.jsonl", '{"text": "a", "label": "x"}\n{"text": "b\\ud800c", "label": "y"}\n')
    with pytest.raises(ConfigError, match=r"s.jsonl:2: the text field 'text' holds '\\ud800', half of a UTF-16 "
                                          r"surrogate pair"):
        _task(train)


def test_spec_takes_paths_and_refuses_empty_lists(tmp_path):
    from pathlib import Path

    train = Path(_write(tmp_path, "t.csv", GOOD))
    assert get_task("custom", {"train": train, "dev": train}).label_names == ("x", "y")
    with pytest.raises(ConfigError, match=r"custom data metrics is an empty list; give at least one name"):
        resolve(RunConfig(task="custom", custom={"train": str(train), "dev": str(train), "metrics": []}))


def test_json_lines_named_csv(tmp_path):
    train = _jsonl(tmp_path, "rows.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with pytest.raises(ConfigError, match=r"rows.csv: column\(s\) .* not found; .* The file looks like JSON Lines: "
                                          r"name it .jsonl"):
        _task(train)
