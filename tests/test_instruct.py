"""Instruction readers: the real GSM8K / LLM-Adapters files, the suites as data, and the user's rows validated
with one clear line per defect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientft.errors import ConfigError
from efficientft.tasks.answers import FILTERS
from efficientft.tasks.instruct import (
    ANSWER_FILTERS,
    ANSWER_TYPES,
    ENV_GSM8K_DIR,
    ENV_LLM_ADAPTERS_DIR,
    SUITES,
    TRAIN_FILES,
    InstructExample,
    gsm8k_dir,
    llm_adapters_dir,
    read_gsm8k,
    read_instruct_file,
    read_llm_adapters,
    suite_sets,
)
from efficientft.tasks.synthetic import make_synthetic


def test_gsm8k_reader_on_the_real_files():
    train = read_gsm8k(gsm8k_dir() / "train.jsonl")
    test = read_gsm8k(gsm8k_dir() / "test.jsonl")
    assert (len(train), len(test)) == (7473, 1319)
    first = train[0]
    assert first.id == "gsm8k/train:0"
    assert first.instruction.startswith("Natalia sold clips to 48 of her friends")
    assert first.output == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in "
                            "April and May.\n#### 72")
    assert first.answer == "72" and first.input == ""
    assert all("<<" not in e.output and e.output.endswith(f"#### {e.answer}") or "," in e.output for e in train)
    assert {e.answer for e in test if "," in e.answer} == set()  # 1,080 is read as 1080
    kept = read_gsm8k(gsm8k_dir() / "train.jsonl", calculator_annotations=True)[0]
    assert "<<48/2=24>>" in kept.output


def test_suites_are_the_llm_adapters_suites():
    assert all(k == s.name for suite in SUITES.values() for k, s in suite.items())
    assert [s.name for s in SUITES["math"].values()] == ["gsm8k", "aqua", "svamp", "mawps", "addsub", "multiarith",
                                               "singleeq", "mathqa"]
    assert [s.name for s in SUITES["commonsense"].values()] == ["boolq", "piqa", "siqa", "hellaswag", "winogrande",
                                                      "arc_e", "arc_c", "obqa"]
    assert {s.max_new_tokens for s in SUITES["math"].values()} == {256}
    assert {s.max_new_tokens for s in SUITES["commonsense"].values()} == {32}
    assert [s.name for s in SUITES["math"].values() if s.extra] == ["mathqa"]
    assert all(s.filter in FILTERS for suite in SUITES.values() for s in suite.values())


def test_every_present_suite_file_reads():
    sizes = {"gsm8k": 1319, "aqua": 254, "svamp": 1000, "mawps": 238, "addsub": 395, "multiarith": 600,
             "singleeq": 508, "mathqa": 2985, "boolq": 3270, "piqa": 1838, "siqa": 1954, "winogrande": 1267,
             "arc_e": 2376, "arc_c": 1172, "obqa": 500}
    seen = {}
    for suite in SUITES:
        for s, path in suite_sets(suite):
            rows = read_llm_adapters(path)
            seen[s.name] = len(rows)
            assert all(r.answer for r in rows)
            assert len({r.id for r in rows}) == len(rows)
    assert {k: v for k, v in seen.items() if k != "hellaswag"} == sizes
    boolq = read_llm_adapters(llm_adapters_dir() / "dataset" / "boolq" / "test.json")[0]
    assert boolq.id == "boolq/test:0" and boolq.answer == "false" and boolq.output == "the correct answer is false"
    for rel in TRAIN_FILES.values():
        assert read_llm_adapters(llm_adapters_dir() / rel)


def test_missing_suite_file_names_path_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_LLM_ADAPTERS_DIR, str(tmp_path))
    assert llm_adapters_dir() == tmp_path
    with pytest.raises(ConfigError) as e:
        suite_sets("math")
    msg = str(e.value)
    assert str(tmp_path / "dataset/gsm8k/test.json") in msg and ENV_LLM_ADAPTERS_DIR in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="unknown evaluation suite 'maths'. Did you mean 'math'"):
        suite_sets("maths")
    monkeypatch.setenv(ENV_GSM8K_DIR, str(tmp_path))
    with pytest.raises(ConfigError, match=f"not found; set {ENV_GSM8K_DIR}"):
        read_gsm8k(gsm8k_dir() / "train.jsonl")


def test_optional_hellaswag_is_skipped_when_absent(tmp_path, monkeypatch):
    for s in SUITES["commonsense"].values():
        if not s.optional:
            (tmp_path / s.path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / s.path).write_text('[{"instruction": "q", "input": "", "output": "o", "answer": "true"}]')
    monkeypatch.setenv(ENV_LLM_ADAPTERS_DIR, str(tmp_path))
    assert "hellaswag" not in [s.name for s, _ in suite_sets("commonsense")]
    hs = SUITES["commonsense"]["hellaswag"]
    (tmp_path / hs.path).parent.mkdir(parents=True)
    (tmp_path / hs.path).write_text('[{"instruction": "q", "input": "", "output": "o", "answer": "ending1"}]')
    assert "hellaswag" in [s.name for s, _ in suite_sets("commonsense")]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_user_rows_jsonl_and_json_array(tmp_path):
    rows = [{"instruction": "Add 2 and 3.", "output": "2 + 3 = 5. The answer is 5", "extra": 1},
            {"instruction": "Add", "input": "4 and 4", "output": "8", "answer": 8}]
    jl = _write(tmp_path, "mine.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    arr = _write(tmp_path, "mine.json", json.dumps(rows))
    for path in (jl, arr):
        got = read_instruct_file(path, "number")
        assert got == [InstructExample("mine:0", "Add 2 and 3.", "", "2 + 3 = 5. The answer is 5", "5"),
                       InstructExample("mine:1", "Add", "4 and 4", "8", "8")]
    text = read_instruct_file(jl, "text")
    assert [e.answer for e in text] == ["2 + 3 = 5. The answer is 5", "8"]
    choice = _write(tmp_path, "c.jsonl", '{"instruction": "q", "output": "The answer is B"}\n'
                                         '{"instruction": "q", "output": "yes, it does", "answer": "yes"}\n')
    assert [e.answer for e in read_instruct_file(choice, "choice")] == ["B", "yes"]
    assert all(f in FILTERS for f in ANSWER_FILTERS.values()) and set(ANSWER_FILTERS) == set(ANSWER_TYPES)


@pytest.mark.parametrize(("name", "content", "answer_type", "message"), [
    ("d.jsonl", "", "text", r"d.jsonl has no examples"),
    ("d.json", "[]", "text", r"d.json has no examples"),
    ("d.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a"\n', "text",
     r"d.jsonl:2 is not a JSON object"),
    ("d.json", '[{"instruction": "a", "output": "b"},', "text", r"d.json:1: not valid JSON"),
    ("d.jsonl", '{"output": "b"}\n', "text", r"d.jsonl:1: no 'instruction' field; every row needs it \(this row "
                                            r"has: output\)"),
    ("d.json", '[{"instruction": "a", "output": "b"}, {"instruction": "a"}]', "text",
     r"d.json: row 2: no 'output' field"),
    ("d.jsonl", '{"instruction": 3, "output": "b"}\n', "text", r"d.jsonl:1: the text field 'instruction' is "
                                                               r"the number 3; it must be a string"),
    ("d.jsonl", '{"instruction": "a", "output": "  "}\n', "text", r"d.jsonl:1: the text field 'output' is empty"),
    ("d.jsonl", '{"instruction": "a", "input": ["x"], "output": "b"}\n', "text",
     r"d.jsonl:1: the text field 'input' is a list of 1 item\(s\); it must be a string"),
    ("d.jsonl", '{"instruction": "a", "output": "b", "answer": true}\n', "text",
     r"d.jsonl:1: 'answer' is the boolean true; it must be a string or a number"),
    ("d.jsonl", '{"instruction": "a", "output": "b", "answer": ""}\n', "text", r"d.jsonl:1: 'answer' is empty"),
    ("d.jsonl", '{"instruction": "a", "output": "no digits"}\n', "number",
     r"d.jsonl:1: no 'answer' and the output holds no number"),
    ("d.jsonl", '{"instruction": "a", "output": "b", "answer": "seven"}\n', "number",
     r"d.jsonl:1: 'answer' 'seven' is not a number"),
    ("d.jsonl", '{"instruction": "a", "output": "b", "answer": "option B"}\n', "choice",
     r"d.jsonl:1: answer 'option B' is not one word; --answer choice needs a one-word label"),
    ("d.json", '"just text"', "text", r"d.json:1 is 'just text', not a JSON object"),
    ("d.json", '[1]', "text", r"d.json: row 1 is the number 1, not an object"),
    ("d.csv", 'instruction,output\na,b\n', "text", r"unknown data format '.csv'; instruction data is .json"),
    ("d.jsonl", '{"instruction": "a", "instruction": "b", "output": "c"}\n', "text",
     r"the key 'instruction' appears more than once"),
])
def test_user_rows_defects_are_one_clear_line(tmp_path, name, content, answer_type, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(ConfigError, match=message) as e:
        read_instruct_file(path, answer_type)
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value)


def test_user_file_missing_and_bad_answer_type(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_instruct_file(tmp_path / "nope.jsonl")
    path = _write(tmp_path, "d.jsonl", '{"instruction": "a", "output": "b"}\n')
    with pytest.raises(ConfigError, match="unknown answer type 'numbr'. Did you mean 'number'"):
        read_instruct_file(path, "numbr")


def test_synthetic_is_deterministic_and_seeds_are_disjoint():
    for name in ("repeat", "reverse"):
        a, b = make_synthetic(name, 2000, seed=0), make_synthetic(name, 2000, seed=0)
        assert a == b
        test = make_synthetic(name, 300, seed=1)
        assert not {e.instruction for e in a} & {e.instruction for e in test}
        assert len({e.instruction for e in a}) == 2000
        assert a[0].id == f"{name}-0:0" and test[0].id == f"{name}-1:0"
        for e in a[:50] + test[:50]:
            words = e.instruction.split(": ", 1)[1].split()
            assert 2 <= len(words) <= 4
            assert e.output == e.answer == " ".join(words if name == "repeat" else words[::-1])
        assert {len(e.instruction.split()) - 1 for e in a} == {2, 3, 4}
    assert make_synthetic("reverse", 1)[0].instruction.startswith("reverse: ")
    with pytest.raises(ConfigError, match="unknown synthetic task 'revers'. Did you mean 'reverse'"):
        make_synthetic("revers", 5)
    with pytest.raises(ConfigError, match="n must be between 1 and"):
        make_synthetic("repeat", 0)
