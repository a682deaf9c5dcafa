"""The command line end to end, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from efficientft.cli import main
from efficientft.resolve import run_key
from efficientft.store import Store


def eft(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "efficientft", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_minilm_on_rte_through_the_cli(tmp_path, glue_dir):
    db = tmp_path / "runs.sqlite"
    p = eft("run", "--task", "rte", "--method", "lora", "--targets", "qv", "--lr-ratio", "4", "--rank", "8",
            "--steps", "3", "--max-train", "48", "--max-eval", "32", "--max-length", "64", "--batch-size", "8",
            "--data-dir", str(glue_dir), "--store", str(db), "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["status"] == "done"
    # MiniLM: 6 layers, hidden 384; LoRA r=8 on Q and V = 6*2*(8*384*2) = 73,728, plus the 2-way head (770)
    assert rec["cost"]["trainable_params"] == 73_728 + 770
    # the base without BERT's pooler (147,840): the bundled MiniLM's classifier reads the mean of the last hidden states
    assert rec["cost"]["base_params"] == 22_713_986 - 147_840 and rec["config"]["head"] == "mean"
    assert rec["config"]["method_args"] == {"rank": 8, "alpha": None, "dropout": 0.0} and rec["config"]["lr_ratio"] == 4.0
    assert rec["provenance"]["model"]["name"] == "minilm"
    assert 0.0 <= rec["main_score"] <= 1.0 and rec["scores"]["dev/accuracy"] == rec["main_score"]
    stored = Store(db).get(rec["run_key"])
    assert stored["scores"] == rec["scores"]
    assert len([c for c in Store(db).curves(rec["run_key"]) if c[2] == "loss"]) == 3
    # the same command again is skipped, not re-run
    again = eft("run", "--task", "rte", "--method", "lora", "--targets", "qv", "--lr-ratio", "4", "--rank", "8",
                "--steps", "3", "--max-train", "48", "--max-eval", "32", "--max-length", "64", "--batch-size", "8",
                "--data-dir", str(glue_dir), "--store", str(db))
    assert again.returncode == 0 and "already done" in again.stderr
    listing = eft("runs", "--store", str(db))
    assert rec["run_key"][:10] in listing.stdout and "lora" in listing.stdout


def test_listing_commands(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(names) and {"full", "lora", "dora"} <= set(names)
    listed = {line.split()[0]: line for line in out.splitlines()}
    for name, paper in [("rslora", "Kalajdzievski 2023"), ("pissa", "Meng et al. 2024"), ("olora", "2024"),
                        ("eva", "Paischer et al. 2024"), ("adalora", "Zhang et al. 2023"), ("ia3", "Liu et al. 2022"),
                        ("loraplus", "Hayou et al. 2024"), ("dora", "Liu et al. 2024")]:
        assert name in listed and paper in listed[name], name
    assert main(["tasks"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names[:9] == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--method", "lorra"], "unknown method 'lorra'. Did you mean 'lora'?"),
        (["--task", "rtee"], "unknown task 'rtee'. Did you mean 'rte'?"),
        (["--lr-ratio", "0"], "lr_ratio must be a positive number, got 0.0"),
        (["--lr", "-1"], "lr must be a positive number"),
        (["--rank", "0"], "rank must be a positive integer, got 0"),
        (["--method", "full", "--rank", "8"], "method 'full' takes no argument 'rank'"),
        (["--targets", "q_proj"], "target 'q_proj' matches no linear module"),
        (["--rank", "4096"], "rank 4096 is larger than"),
        (["--data-dir", "/nonexistent"], "data directory '/nonexistent' does not exist"),
        (["--model", "/nonexistent/model"], "model directory '/nonexistent/model' does not exist"),
    ],
)
def test_bad_input_is_one_clear_error_with_exit_code_2(args, msg, tmp_path, capsys, tiny_bert):
    model = [] if "--model" in args else ["--model", str(tiny_bert)]
    code = main(["run", "--steps", "1", "--max-train", "8", "--store", str(tmp_path / "s.sqlite"), *model, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert msg in err and "Traceback" not in err
    assert not (tmp_path / "s.sqlite").exists() or Store(tmp_path / "s.sqlite").runs() == []


@pytest.mark.parametrize("flag, kind", [("--data-dir", "data directory"), ("--model", "model directory")])
def test_a_file_given_for_a_folder_is_called_a_file(flag, kind, tmp_path, capsys, tiny_bert):
    """Was: "does not exist", about a file that is there."""
    given = tmp_path / "model.safetensors"
    given.write_bytes(b"x")
    model = [] if flag == "--model" else ["--model", str(tiny_bert)]
    code = main(["run", "--steps", "1", "--store", str(tmp_path / "s.sqlite"), *model, flag, str(given)])
    where = " (from --data-dir or EFT_DATA_DIR)" if flag == "--data-dir" else ""
    assert code == 2
    assert capsys.readouterr().err.strip() == f"eft run: error: {kind} '{given}' is a file, not a folder{where}."


@pytest.mark.parametrize("flag, kind", [("--train-file", "data file"), ("--config", "config file")])
def test_a_folder_given_for_a_file_is_called_a_folder(flag, kind, tmp_path, capsys, tiny_bert):
    """Was: "does not exist", about a folder that is there."""
    code = main(["run", "--steps", "1", "--store", str(tmp_path / "s.sqlite"), "--model", str(tiny_bert), flag,
                 str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"eft run: error: {kind} '{tmp_path}' is a folder, not a file."


def test_model_dir_without_weights(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert main(["run", "--model", str(tmp_path / "m"), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "has no weights" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path, tiny_bert, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"task: rte\nmethod: full\ntargets: qkv\nlr_ratio: 2\nsteps: 2\nmax_train: 16\nmax_eval: 16\n"
                   f"model: {tiny_bert}\nbatch_size: 8\n")
    assert main(["run", "--config", str(cfg), "--seed", "5", "--store", str(tmp_path / "s.sqlite"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["config"]["method"] == "full" and rec["config"]["seed"] == 5 and rec["config"]["lr_ratio"] == 2.0


def test_custom_data_through_the_cli(tmp_path, tiny_bert, capsys):
    rows = "text,label\n" + "".join(f"sample {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    (tmp_path / "train.csv").write_text(rows)
    code = main(["run", "--train-file", str(tmp_path / "train.csv"), "--eval-file", str(tmp_path / "train.csv"),
                 "--model", str(tiny_bert), "--steps", "2", "--method", "lora", "--rank", "2",
                 "--store", str(tmp_path / "s.sqlite"), "--json"])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["config"]["task"].startswith("custom@") and "dev/accuracy" in rec["scores"]  # named by its data
    assert set(rec["config"]["custom"]["sha256"]) == {"train", "dev"}


def test_speed_flags_reach_the_config(tmp_path):
    from efficientft.cli import build_parser, config_from_args

    yaml = tmp_path / "run.yaml"
    yaml.write_text("task: rte\nbucket: true\n")
    cfg = config_from_args(build_parser().parse_args(["run", "--feature-cache", "--precision", "auto"]))
    assert cfg.feature_cache is True and cfg.bucket is False and cfg.precision == "auto"
    cfg = config_from_args(build_parser().parse_args(["run", "--config", str(yaml)]))
    assert cfg.bucket is True and cfg.feature_cache is False  # an absent flag does not override the file


def test_max_grad_norm_0_is_no_clipping_in_a_file_as_on_the_command_line(tmp_path):
    """One rule converts 0 to None (no clipping) wherever the value is written; a run file used to refuse it."""
    from efficientft.cli import build_parser, config_from_args
    from efficientft.config import RunConfig

    yaml = tmp_path / "run.yaml"
    yaml.write_text("task: rte\nmax_grad_norm: 0\n")
    from_file = config_from_args(build_parser().parse_args(["run", "--config", str(yaml)]))
    from_flag = config_from_args(build_parser().parse_args(["run", "--task", "rte", "--max-grad-norm", "0"]))
    from_dict = RunConfig.from_dict({"task": "rte", "max_grad_norm": 0.0})  # a suite's run
    assert from_file.max_grad_norm is None and from_flag.max_grad_norm is None and from_dict.max_grad_norm is None
    assert run_key(from_file) == run_key(from_flag) == run_key(from_dict) == run_key(RunConfig(task="rte", max_grad_norm=None))
    assert run_key(from_file) != run_key(RunConfig(task="rte"))  # the default clips at 1.0
