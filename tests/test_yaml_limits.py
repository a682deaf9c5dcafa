"""A few hundred bytes of nested YAML aliases must be one error, not a run that never starts (issue 11)."""

import pytest

from efficientft.config import RunConfig, load_yaml
from efficientft.errors import ConfigError
from efficientft.sweep.suite import load_marked


def _laughs(indent: str = "    ") -> str:
    """Nine levels of nine aliases each: 9**9 values from about 400 bytes."""
    lines = [f"{indent}- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    prev = "a"
    for c in "bcdefghi":
        lines.append(f"{indent}- &{c} [{', '.join(['*' + prev] * 9)}]")
        prev = c
    return "\n".join(lines) + "\n"


def _bomb(tmp_path):
    train = tmp_path / "t.csv"
    train.write_text("text,label\na,x\nb,y\n")
    p = tmp_path / "bomb.yaml"
    p.write_text(f"task: custom\ncustom:\n  train: {train}\n  dev: {train}\n  labels:\n{_laughs()}")
    assert p.stat().st_size < 700
    return p


def test_run_config_that_expands_without_bound(tmp_path):
    with pytest.raises(ConfigError, match=r"bomb.yaml: the YAML expands to more than 100,000 values once its "
                                          r"aliases \(\*name\) are expanded"):
        RunConfig.from_yaml(_bomb(tmp_path))


def test_suite_that_expands_without_bound(tmp_path):
    p = tmp_path / "suite.yaml"
    p.write_text(f"name: s\nruns:\n  - task: rte\n    lr:\n{_laughs('      ')}")
    with pytest.raises(ConfigError, match=r"suite.yaml: the YAML expands to more than 100,000 values"):
        load_marked(p)


def test_recursive_alias(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text("method_args:\n  x: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=r"rec.yaml, line 2: a YAML alias refers to a value that contains it"):
        load_yaml(p)


def test_shared_anchors_within_the_bound_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {lr: 0.001, seed: 1}\nruns:\n  - {<<: *b, method: lora}\n  - {<<: *b, method: full}\n")
    assert load_yaml(p)["runs"][1] == {"lr": 0.001, "seed": 1, "method": "full"}



def test_suite_grid_that_multiplies_past_the_bound(tmp_path):
    from efficientft.sweep.suite import load_suite

    axes = "\n".join(f"  {k}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" for k in ("seed", "data_seed", "steps", "max_length",
                                                                           "batch_size", "eval_every"))
    p = tmp_path / "grid.yaml"
    p.write_text(f"name: g\ngrid:\n{axes}\nmethods:\n  - {{method: lora}}\n")
    assert p.stat().st_size < 546
    with pytest.raises(ConfigError, match=r"grid.yaml: the suite expands to 1,000,000 runs, more than the limit of "
                                          r"100,000"):
        load_suite(p).expand(validate=False)


@pytest.mark.parametrize("name", ["run.yaml", "suite.yaml"])
def test_config_files_that_are_not_utf8(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"name: s\nmodel: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{name}:2: not UTF-8 \(byte 0xe9 at byte offset 18 .*save the file as "
                                          r"UTF-8"):
        load_yaml(p) if name == "run.yaml" else load_marked(p)
