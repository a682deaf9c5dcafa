"""Bad input is one clear line (what was wrong, what is accepted) and exit 2 before training, never a traceback:
cases found by a hostile hour (issue 22, section 5)."""

from __future__ import annotations

import traceback

import pytest

from efficientft.cli import main
from efficientft.errors import ConfigError
from efficientft.store import Store

LATIN1 = "caf\xe9 au lait\n".encode("latin-1")  # byte 0xe9 at offset 3 is not UTF-8


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"eft {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------- text that is not UTF-8
def test_suite_show_of_a_binary_file_is_one_line(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"name: x\n\xff\xfe\x00\x01")
    assert main(["suite", "show", str(p)]) == 2
    assert _one_line(capsys, "suite") == (f"eft suite: error: {p}:2: a NUL byte at byte offset 10: this is binary "
                                          "data, not .yaml text; save the data as UTF-8 text.")
    p.write_bytes(b"name: x\n" + LATIN1)
    assert main(["suite", "show", str(p)]) == 2
    assert "s.yaml:2: not UTF-8 (byte 0xe9 at byte offset 11 cannot be decoded" in _one_line(capsys, "suite")


def test_a_forgetting_file_that_is_not_utf8_is_one_line_before_training(causal_llama, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_bytes(LATIN1)
    assert main(["run", "--model", str(causal_llama), "--task", "synthetic-reverse", "--steps", "1",
                 "--max-train", "4", "--max-eval", "2", "--max-length", "32", "--batch-size", "2",
                 "--forgetting-file", str(held), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert _one_line(capsys, "run") == (f"eft run: error: {held}:1: not UTF-8 (byte 0xe9 at byte offset 3 cannot "
                                        "be decoded: invalid continuation byte); save the file as UTF-8.")
    assert not (tmp_path / "s.sqlite").exists() or not Store(tmp_path / "s.sqlite").runs()


def test_a_metamath_file_that_is_not_utf8_names_the_file_and_offset(tmp_path):
    from efficientft.tasks.generative import read_train_data

    p = tmp_path / "mm.jsonl"
    p.write_bytes(b'{"query": "What is 2+3?", "response": "5"}\n{"query": "caf\xe9", "response": "1"}\n')
    with pytest.raises(ConfigError) as e:
        read_train_data(str(p))
    assert str(e.value) == (f"{p}:2: not UTF-8 (byte 0xe9 at byte offset 57 cannot be decoded: invalid "
                            "continuation byte); save the file as UTF-8.")


# ---------------------------------------------------------------------------------------------- suite names
def test_a_folder_named_like_a_shipped_suite_takes_the_suite_and_says_so(tmp_path, monkeypatch, capsys):
    from efficientft.suites import SUITES

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()  # e.g. the output folder of an earlier `eft report --out quick`
    assert main(["suite", "show", "quick"]) == 0
    out, err = capsys.readouterr()
    assert out == (SUITES.folder / "quick.yaml").read_text(encoding="utf-8")
    assert err.strip() == (f"suite 'quick': ./quick here is a folder, not a suite file; using the shipped suite "
                           f"{SUITES.folder / 'quick.yaml'}.")
    assert main(["sweep", "quick", "--dry-run", "--store", str(tmp_path / "s.sqlite")]) == 0
    out, err = capsys.readouterr()
    assert "suite quick: " in out and "using the shipped suite" in err
    # a file of that name is the user's own, and that is said too
    (tmp_path / "quick").rmdir()
    (tmp_path / "quick").write_text((SUITES.folder / "quick.yaml").read_text(encoding="utf-8"))
    assert main(["suite", "show", "quick"]) == 0
    assert capsys.readouterr().err.strip() == ("suite 'quick': using the file ./quick here, not the shipped suite "
                                               "of that name (rename the file to use the shipped one).")


# ---------------------------------------------------------------------------------------------- model folders
def test_a_pickle_bin_model_folder_is_refused_saying_why_and_how_to_convert(tiny_bert, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    m = tmp_path / "bin-model"
    shutil.copytree(tiny_bert, m)
    torch.save(load_file(m / "model.safetensors"), m / "pytorch_model.bin")  # what safe_serialization=False wrote
    (m / "model.safetensors").unlink()
    db = tmp_path / "s.sqlite"
    assert main(["run", "--model", str(m), "--task", "rte", "--steps", "1", "--store", str(db)]) == 2
    err = _one_line(capsys, "run")
    assert err.startswith(f"eft run: error: model directory {str(m)!r} has only pickle weights (pytorch_model.bin): "
                          "only safetensors weights are read (a pickle .bin/.pt file can run code when it is "
                          "loaded); convert each file once, e.g. python -c ")
    assert not db.exists() or not Store(db).runs()
    # the conversion it names gives a folder that loads (torch.load with weights_only=True runs no code)
    command = err.split("e.g. python -c ", 1)[1].strip('"')
    exec(compile(command, "<conversion>", "exec"), {})
    from efficientft.models.loading import resolve_model

    assert resolve_model(str(m)) == str(m.resolve())


# ---------------------------------------------------------------------------------------------- data parallel
class TwoProcesses:
    """accelerate.Accelerator of a 2-process data-parallel launch, without launching (as test_sharding fakes it)."""

    num_processes, process_index, is_main_process, device = 2, 0, True, __import__("torch").device("cpu")
    distributed_type = None

    def __init__(self, cpu: bool) -> None:
        self.cpu = cpu


def test_a_batch_that_would_leave_a_process_empty_is_refused_before_training(tiny_bert, glue_dir, monkeypatch):
    import accelerate

    from efficientft.config import RunConfig
    from efficientft.runtime import build_runtime, check_shards
    from efficientft.train import prepare

    monkeypatch.setattr(accelerate, "Accelerator", TwoProcesses)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    # 9 examples in batches of 8: the second batch of every epoch has 1 example for 2 processes
    cfg = RunConfig(model=str(tiny_bert), task="rte", steps=3, max_train=9, max_eval=8, max_length=32, batch_size=8,
                    device="cpu", data_dir=str(glue_dir), progress=False)
    with pytest.raises(ConfigError) as e:
        prepare(cfg, build_runtime(cfg, world_size=2))
    assert str(e.value) == ("the 9 training example(s) leave a last batch of 1 in every epoch, fewer than the 2 "
                            "data-parallel processes (each needs at least one example of every batch); use a "
                            "training set whose size is a multiple of batch_size 8 or leaves at least 2 over "
                            "(e.g. --max-train 8), or fewer processes.")
    check_shards(10, 8, 2)  # a last batch of 2: one example each
    check_shards(16, 8, 2)
    check_shards(9, 8, 1)  # one process takes any batch
    with pytest.raises(ConfigError, match="the 1 training example"):
        check_shards(1, 8, 2)  # fewer examples than processes: no size helps


def test_a_truncated_safetensors_file_is_one_line(tiny_bert, glue_dir, tmp_path, capsys):
    import shutil

    m = tmp_path / "cut-model"
    shutil.copytree(tiny_bert, m)
    weights = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(weights[:-5000])  # an interrupted download
    assert main(["run", "--model", str(m), "--task", "rte", "--steps", "1", "--max-train", "8", "--max-eval", "8",
                 "--data-dir", str(glue_dir), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert _one_line(capsys, "run") == (
        f"eft run: error: model {str(m)!r}: a weights file is not a complete safetensors file (Error while "
        "deserializing header: incomplete metadata, file not fully covered); download or save the model again.")


def test_a_model_folder_without_a_tokenizer_is_refused(tiny_bert, glue_dir, tmp_path, capsys):
    """transformers builds a tokenizer of 5 special tokens for such a folder: every word would be [UNK]."""
    import shutil

    m = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_bert, m, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "special_tokens*"))
    assert main(["run", "--model", str(m), "--task", "rte", "--steps", "1", "--max-train", "8", "--max-eval", "8",
                 "--max-length", "32", "--data-dir", str(glue_dir), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert _one_line(capsys, "run") == (
        f"eft run: error: model directory {str(m)!r} has no tokenizer (none of tokenizer.json, tokenizer_config.json,"
        " vocab.txt, vocab.json, tokenizer.model, spiece.model, sentencepiece.bpe.model); save the tokenizer beside "
        "the model (tokenizer.save_pretrained(DIR)).")


# ---------------------------------------------------------------------------------------------- sizes
def test_virtual_tokens_that_alone_fill_the_model_are_one_line(tiny_bert, glue_dir, tmp_path, capsys):
    """A prompt longer than every position the model has is refused by its size, before anything is allocated."""
    assert _run_with_little_memory(tiny_bert, glue_dir, tmp_path, "--method", "prompt_tuning", "--method-arg",
                                   "num_virtual_tokens=100000000") == 2
    assert _one_line(capsys, "run") == (
        f"eft run: error: the 100000000 virtual tokens of method 'prompt_tuning' alone fill model {str(tiny_bert)!r}, "
        "which reads 128 positions; give the method fewer virtual tokens (at most 127).")


def _run_with_little_memory(model, glue_dir, tmp_path, *flags: str) -> int:
    """``eft run`` of a tiny run with ``flags`` in this process, its address space capped 4 GiB above what it
    holds: an allocation of ~12 GB then fails at once instead of filling a shared machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 30), hard))
    try:
        return main(["run", "--model", str(model), "--task", "rte", *flags, "--steps", "1", "--max-train", "8",
                     "--max-eval", "8", "--max-length", "32", "--batch-size", "8", "--data-dir", str(glue_dir),
                     "--store", str(tmp_path / "s.sqlite")])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("flags, what", [
    (("--method", "houlsby", "--method-arg", "bottleneck=100000000"), "method 'houlsby' (bottleneck=100000000, "),
    (("--method", "parallel_adapter", "--method-arg", "bottleneck=100000000"),
     "method 'parallel_adapter' (bottleneck=100000000, "),
])
def test_any_method_whose_sizes_cannot_be_allocated_is_one_line(flags, what, tiny_bert, glue_dir, tmp_path, capsys):
    """Named methods are not estimated in advance; an allocation that fails is still the CLI's one line."""
    assert _run_with_little_memory(tiny_bert, glue_dir, tmp_path, *flags) == 2
    err = _one_line(capsys, "run")
    assert err.startswith(f"eft run: error: {what}") and err.endswith(
        "ran out of memory allocating one tensor of 11.9 GiB on this model; choose smaller sizes."), err
    assert not Store(tmp_path / "s.sqlite").runs() or Store(tmp_path / "s.sqlite").runs()[0]["status"] != "done"


@pytest.mark.parametrize("tuner", ["loha", "vera"])  # vera: shared projections (buffers) and per-module vectors
def test_a_peft_tuner_too_large_for_memory_is_refused_before_allocating(tuner, tiny_bert, glue_dir, tmp_path,
                                                                         capsys):
    code = _run_with_little_memory(tiny_bert, glue_dir, tmp_path, "--method", "peft", "--method-arg",
                                   f"tuner={tuner}", "--method-arg", "r=100000000")
    assert code == 2
    err = _one_line(capsys, "run")
    assert err.startswith(f"eft run: error: method 'peft': tuner {tuner!r} with r=100000000 on 4 module(s) needs "
                          "about ")
    assert "GiB to train its adapters, more than the " in err and err.endswith("choose smaller sizes.")
    need = float(err.split("needs about ")[1].split(" GiB")[0].replace(",", ""))
    # LoHa: 4 factors of 32 x r per module; VeRA: A (r x 32) and B (32 x r) frozen, λ_d (r) trained per module
    assert need == pytest.approx({"loha": 4 * 16 * 4 * 32 * 1e8, "vera": 4 * 2 * 32 * 1e8 + 4 * 16 * 1e8}[tuner]
                                 / 2**30, rel=1e-3)


def test_a_peft_tuner_that_fits_is_estimated_and_trains(tiny_bert):
    from efficientft.methods.base import Context
    from efficientft.methods.peft_generic import GenericPeft, _adapter_bytes
    from efficientft.models.loading import load_model
    from efficientft.models.roles import resolve_targets

    model = load_model(str(tiny_bert), 2).model
    targets = resolve_targets(model, "qv")
    method = GenericPeft.from_config({"tuner": "loha", "r": 4})
    ctx = Context(heads=["classifier"], total_steps=1, num_labels=2, seed=0, base_model=str(tiny_bert),
                  peft_task_type="SEQ_CLS")
    need = _adapter_bytes(method.peft_config(model, targets, ctx), model, targets)
    wrapped = method.prepare(model, targets, ctx)
    trained = sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and "hada" in n)
    assert need == 16 * trained == 16 * 4 * (4 * 4 * 32)


# ---------------------------------------------------------------------------------------------- the Python API
NOWHERE = {"task": "rte", "model": "/nonexistent/model"}  # a config that passed the check fails fast: never trains
@pytest.mark.parametrize("call, message", [
    (lambda eft, db: eft.run(None, store=db),
     "config must be a RunConfig or a mapping of its fields, e.g. {'task': 'rte', 'method': 'lora'}; got NoneType "
     "None."),
    (lambda eft, db: eft.run("rte", store=db), "config must be a RunConfig or a mapping of its fields"),
    (lambda eft, db: eft.run(NOWHERE, store=db, force="yes"), "force must be True or False; got str 'yes'."),
    (lambda eft, db: eft.run(NOWHERE, store=5),
     "store must be a Store, a path (str or Path) or None (the default store); got int 5."),
    (lambda eft, db: eft.runs_frame({}), "store must be a Store, a path (str or Path) or None (the default store); "
                                         "got dict {}."),  # {} is falsy: it silently read the default store
    (lambda eft, db: eft.runs_frame(db, status=5),
     "status must be a list of names (or one comma-separated string); got int 5."),
    (lambda eft, db: eft.load_suite(None),
     "suite must be a shipped suite's name (see list_suites()) or a suite file's path; got NoneType None."),
    (lambda eft, db: eft.load_suite({"name": "mine", "methods": [{"method": "lora"}]}),
     "suite must be a shipped suite's name or the path of a suite file, not a mapping; write the mapping to a YAML "
     "file (yaml.safe_dump) and pass its path."),
    (lambda eft, db: eft.run_suite(3, store=db),
     "suite must be a shipped suite's name (see list_suites()) or a suite file's path; got int 3."),
    (lambda eft, db: eft.table_frame("table.csv"),
     "rep must be a Report (what build_report() returns); got str 'table.csv'."),
    (lambda eft, db: eft.build_report(db, digit=2),
     "build_report() has no option 'digit'. Did you mean 'digits'? Options: tags, metrics, pairs, test, digits, ci."),
])
def test_api_misuse_is_one_clear_type_error(call, message, tmp_path):
    import efficientft as eft

    db = tmp_path / "s.sqlite"
    Store(db)
    with pytest.raises(TypeError) as e:
        call(eft, str(db))
    assert str(e.value).startswith(message)
    assert not [f for f in traceback.extract_tb(e.value.__traceback__)
                if "site-packages" in f.filename or "pathlib" in f.filename]  # raised by us, not deep inside


def test_api_names_given_as_one_string_are_names_not_characters(tmp_path, monkeypatch):
    import efficientft as eft
    from efficientft.report import build as build_module

    seen = {}
    monkeypatch.setattr(build_module, "build", lambda store, split, tasks, methods, **kw: seen.update(
        tasks=tasks, methods=methods))
    Store(tmp_path / "s.sqlite")
    eft.build_report(str(tmp_path / "s.sqlite"), tasks="rte", methods="lora, full")
    assert seen == {"tasks": ["rte"], "methods": ["lora", "full"]}  # not ['r', 't', 'e'] ("no runs of task 'r'")


# ---------------------------------------------------------------------------------------------- eft sweep --dry-run
def test_dry_run_only_reads_a_store_in_a_read_only_folder_and_creates_no_absent_one(tmp_path, monkeypatch, capsys):
    """A guard (this already held before issue 22): tests run as root, where chmod does not stop writes, so a
    read-only folder is what os.access reports; the plan then opens SQLite immutable and leaves no -wal/-shm."""
    import os

    from efficientft.store import Store

    ro = tmp_path / "ro"
    Store(ro / "s.sqlite")  # an empty store, as `eft run` creates it
    before = {p.name: p.read_bytes() for p in ro.iterdir()}
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and str(p).startswith(str(ro))
                        else real(p, mode, **kw))
    assert main(["sweep", "sweep-check", "--dry-run", "--store", str(ro / "s.sqlite")]) == 0
    assert "to run." in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in ro.iterdir()} == before  # no -wal, no -shm, the file as it was
    assert main(["sweep", "sweep-check", "--dry-run", "--store", str(tmp_path / "absent" / "s.sqlite")]) == 0
    assert not (tmp_path / "absent").exists()
