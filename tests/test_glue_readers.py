"""Every GLUE reader on the real files: counts, first rows, labels; the big tasks' layouts on their partial copies."""

import shutil

import pytest

from efficientft.errors import ConfigError
from efficientft.tasks import TASKS, DataOptions, get_task


@pytest.fixture
def data(glue_dir):
    return DataOptions(str(glue_dir))


@pytest.mark.parametrize(
    "task,split,n,text_a,text_b,label",
    [
        ("cola", "train", 8551, "Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
        ("cola", "dev", 1043, "The sailors rode the breeze clear of the rocks.", None, 1),
        ("sst2", "train", 67349, "hide new secretions from the parental units ", None, 0),
        ("sst2", "dev", 872, "it 's a charming and often affecting journey . ", None, 1),
        ("mrpc", "train", 3668, "Amrozi accused his brother , whom he called \" the witness \" , of deliberately "
         "distorting his evidence .", "Referring to him as only \" the witness \" , Amrozi accused his brother of "
         "deliberately distorting his evidence .", 1),
        ("mrpc", "dev", 408, "He said the foodservice pie business doesn 't fit the company 's long-term growth "
         "strategy .", "\" The foodservice pie business does not fit our long-term growth strategy .", 1),
        ("stsb", "dev", 1500, "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0),
        ("stsb", "train", 5749, "A plane is taking off.", "An air plane is taking off.", 5.0),
        ("rte", "dev", 277, "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age "
         "44, according to the Christopher Reeve Foundation.", "Christopher Reeve had an accident.", 1),
        ("wnli", "dev", 71, "The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0),
        ("qnli", "dev", 5463, "What came into force after the new constitution was herald?",
         "As of that day, the new constitution heralding the Second Republic came into force.", 0),
    ],
)
def test_reader_first_row_and_count(data, task, split, n, text_a, text_b, label):
    ex = TASKS.get(task).load(split, data)
    assert len(ex) == n
    assert ex.text_a[0] == text_a
    assert (ex.text_b[0] if ex.text_b is not None else None) == text_b
    assert ex.labels[0] == label
    assert ex.skipped_rows == 0


def test_label_ids_follow_hub_order(data):
    rte = TASKS.get("rte").load("dev", data)
    assert set(rte.labels) == {0, 1}  # entailment = 0, not_entailment = 1, as nyu-mll/glue
    stsb = TASKS.get("stsb").load("dev", data)
    assert isinstance(stsb.labels[0], float) and 0 <= min(stsb.labels) and max(stsb.labels) <= 5


def test_mnli_reader_on_the_official_layout(glue_dir, tmp_path):
    (tmp_path / "MNLI").mkdir()
    shutil.copy(glue_dir / "partial" / "MNLI" / "official_train_rows_48.tsv", tmp_path / "MNLI" / "train.tsv")
    ex = TASKS.get("mnli").load("train", DataOptions(str(tmp_path)))
    assert len(ex) == 48
    assert (ex.text_a[0], ex.text_b[0], ex.labels[0]) == ("That's all right.", "That's fine.", 0)
    assert set(ex.labels) <= {0, 1, 2}
    assert TASKS.get("mnli").eval_splits == ("dev", "dev_mm")


def test_qqp_reader_skips_the_damaged_row(glue_dir, tmp_path):
    (tmp_path / "QQP").mkdir()
    rows = (glue_dir / "partial" / "QQP" / "official_train_rows_23497.tsv").read_text(encoding="utf-8")
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    (tmp_path / "QQP" / "train.tsv").write_text(header + rows, encoding="utf-8")
    ex = TASKS.get("qqp").load("train", DataOptions(str(tmp_path)))
    assert ex.skipped_rows == 1  # the first row lost a tab: label joined to question2
    assert len(ex) == 23496
    assert ex.text_a[0] == "What causes stool color to change to yellow?"
    assert ex.labels[0] == 0


def test_sample_tasks(data):
    qnli = get_task("qnli-sample")
    assert len(qnli.load("train", data)) == 8999 and len(qnli.load("dev", data)) == 5463
    assert qnli.comparable
    mnli = get_task("mnli-sample")
    assert not mnli.comparable and mnli.num_labels == 3
    assert len(mnli.load("dev", data)) == 1000


def test_missing_files_name_the_file_and_a_way_out(data):
    with pytest.raises(ConfigError, match=r"MNLI/train.tsv is missing.*mnli-sample"):
        TASKS.get("mnli").load("train", data)


def test_no_data_dir(monkeypatch):
    monkeypatch.delenv("EFT_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="--data-dir DIR or set EFT_DATA_DIR"):
        TASKS.get("rte").load("train", DataOptions(None))


def test_unknown_task_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'rte'"):
        get_task("rtee")


def test_label_outside_label_set(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ConfigError, match=r"label 'maybe' at .*train.tsv:2 .*accepted labels: entailment, not_entailment"):
        TASKS.get("rte").load("train", DataOptions(str(tmp_path)))


def test_seeded_subsample_and_selection_split(data):
    ex = TASKS.get("rte").load("train", data)
    a, b = ex.sample(100, seed=1), ex.sample(100, seed=1)
    assert a.text_a == b.text_a and len(a) == 100
    assert ex.sample(100, seed=2).text_a != a.text_a
    rest, held = ex.split_off(0.1, seed=0)
    assert len(held) == 249 and len(rest) == len(ex) - 249
    assert ex.split_off(0.1, seed=0)[1].text_b == held.text_b
    assert ex.split_off(0.1, seed=1)[1].text_b != held.text_b


def test_hub_reader_maps_fields_and_splits(monkeypatch):
    """The hub path (used when online) with ``datasets.load_dataset`` replaced by an in-memory copy."""
    import datasets

    calls = []

    def fake_load(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0],
                                           "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ex = TASKS.get("mnli").load("dev_mm", DataOptions(source="hub"))
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert (ex.text_a, ex.text_b, ex.labels) == (["p1", "p2"], ["h1", "h2"], [2, 0])


def test_headerless_file_with_too_few_columns(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text("gj04\t1\n")
    with pytest.raises(ConfigError, match=r"CoLA/train.tsv:1: 2 column\(s\), but the cola reader takes column 4"):
        TASKS.get("cola").load("train", DataOptions(str(tmp_path)))


@pytest.mark.parametrize("text", ['{"0": {"text_a": "a", "text_b": "b"}}', "[1, 2]", "not json", '{"x": {}}'])
def test_damaged_sample_file(tmp_path, text):
    (tmp_path / "partial" / "QQP").mkdir(parents=True)
    (tmp_path / "partial" / "QQP" / "official_train_sample_8999.json").write_text(text)
    with pytest.raises(ConfigError, match=r"official_train_sample_8999.json: not the partial/ sample layout"):
        get_task("qqp-sample").load("train", DataOptions(str(tmp_path)))


@pytest.mark.parametrize("row, msg", [
    ('{"text_a": null, "text_b": "b", "label": "1"}', "json:0: the text field 'text_a' is null"),
    ('{"text_a": "a", "text_b": 7, "label": "1"}', "json:0: the text field 'text_b' is the number 7"),
    ('{"text_a": " ", "text_b": "b", "label": "1"}', "json:0: the text field 'text_a' is empty"),
])
def test_sample_file_rows_are_checked_as_every_training_row(tmp_path, row, msg):
    """A null text used to train on the text "None"."""
    (tmp_path / "partial" / "QQP").mkdir(parents=True)
    (tmp_path / "partial" / "QQP" / "official_train_sample_8999.json").write_text(f'{{"0": {row}}}')
    with pytest.raises(ConfigError, match=msg):
        get_task("qqp-sample").load("train", DataOptions(str(tmp_path)))
