"""EfficientFT as an installed package: shipped suites by name, ``eft --version``, ``--push-to-hub`` checks."""

from __future__ import annotations

import pytest

import efficientft
from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.suites import SUITES, resolve_suite
from efficientft.sweep import load_suite


def test_shipped_suites_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    p = resolve_suite("quick")
    assert p.parent == SUITES.folder and p.is_file()
    assert load_suite("paper-table2").name == "paper-table2"


def test_a_path_still_works_and_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").write_text(resolve_suite("quick").read_text().replace("name: quick", "name: mine"))
    assert load_suite("quick").name == "mine"  # the user's own file called quick
    assert load_suite(str(tmp_path / "quick")).name == "mine"


def test_unknown_suite_name_says_did_you_mean_and_lists_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "quik", "--dry-run", "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("eft sweep: error: unknown suite 'quik'. Did you mean 'quick'? Known suites: "
                   + ", ".join(SUITES.names()) + ".")


def test_old_configs_path_names_the_shipped_suite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "configs/quick.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eft sweep: error: suite file 'configs/quick.yaml' does not exist. EfficientFT ships a "
                          "suite called 'quick': pass its name. Shipped suites (by name): all-methods,")
    assert "\n" not in err and "Traceback" not in err


def test_a_folder_is_not_a_suite(tmp_path, capsys):
    assert main(["sweep", str(tmp_path), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"eft sweep: error: {str(tmp_path)!r} is a folder, not a suite file; pass a .yaml file or the name of a "
        f"shipped suite: {', '.join(SUITES.names())}.")


def test_eft_suites_lists_one_line_each(capsys):
    assert main(["suites"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == SUITES.names()
    quick = next(line for line in lines if line.startswith("quick "))
    assert "Full fine-tuning of Q,K,V vs LoRA on Q,K,V vs LoRA on Q,V" in quick


def test_eft_suite_show_prints_the_file_verbatim_and_it_loads_back(tmp_path, capsys):
    assert main(["suite", "show", "quick"]) == 0
    text = capsys.readouterr().out
    assert text == resolve_suite("quick").read_text(encoding="utf-8")
    assert text.startswith("# The README's main job")  # comments kept, so a copy is documented
    (tmp_path / "mine.yaml").write_text(text.replace("seed: [0, 1, 2]", "seed: [7]"))
    assert [r.cfg.seed for r in load_suite(tmp_path / "mine.yaml").expand()] == [7, 7, 7]


def test_eft_suite_show_unknown(capsys):
    assert main(["suite", "show", "paper"]) == 2
    assert capsys.readouterr().err.startswith("eft suite: error: unknown suite 'paper'. Did you mean 'paper-table2'?")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"eft {efficientft.__version__}"


def test_the_package_version_is_the_distribution_version():
    from importlib.metadata import version

    assert version("efficientft") == efficientft.__version__


@pytest.mark.parametrize("args, msg", [
    (["--push-to-hub", "me/adapter"], "eft run: error: --push-to-hub uploads the exported weights: add --export-dir DIR."),
    (["--push-to-hub", "not a repo", "--export-dir", "x"],
     "eft run: error: --push-to-hub wants a Hub repo id like owner/name (letters, digits, '-', '_', '.'), "
     "got 'not a repo'."),
    (["--push-to-hub", "a/b/c", "--export-dir", "x"],
     "eft run: error: --push-to-hub wants a Hub repo id like owner/name (letters, digits, '-', '_', '.'), "
     "got 'a/b/c'."),
])
def test_push_to_hub_is_checked_before_training(args, msg, tmp_path, capsys, monkeypatch):
    import efficientft.train

    monkeypatch.setattr(efficientft.train, "run", lambda *a, **k: pytest.fail("trained despite bad input"))
    assert main(["run", "--store", str(tmp_path / "s.sqlite"), *args]) == 2
    assert capsys.readouterr().err.strip() == msg
    assert not (tmp_path / "s.sqlite").exists()


def test_hub_repo_ids_that_are_fine():
    from efficientft.hub import check_hub_repo

    for repo in ("me/adapter", "adapter", "Org-1/lora_qv.v2"):
        check_hub_repo(repo, "out")
    with pytest.raises(ConfigError):
        check_hub_repo("me/../x", "out")
