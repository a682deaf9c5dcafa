"""The benchmarks' own pieces: the floor trains nothing of the backbone yet back-propagates through all of it."""

import argparse
import sys

import pytest
import torch

from efficientft.train import forward, prepare
from tests.conftest import ROOT, tiny_config

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_floor_freezes_the_backbone_but_gradients_reach_layer_0(tiny_bert):
    from _common import make_floor

    p = make_floor(prepare(tiny_config(tiny_bert, method="full", targets="all", method_args={})))
    trainable = [n for n, q in p.model.named_parameters() if q.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert [n for g in p.groups for n in g["names"]] == trainable
    seen = {}

    def keep(module, args, output):  # the embeddings' output, which enters layer 0
        output.retain_grad()
        seen["embeddings"] = output

    p.model.bert.embeddings.register_forward_hook(keep)
    idx, batch = next(p.batches().indexed())
    forward(p, "train", idx, batch).loss.backward()
    assert seen["embeddings"].grad is not None and torch.count_nonzero(seen["embeddings"].grad) > 0
    assert all(q.grad is None for n, q in p.model.named_parameters() if n not in trainable)


def test_step_time_benchmark_runs_and_reports_ratios(tiny_bert, capsys, monkeypatch):
    import step_time
    from _common import register_references

    from efficientft.methods import METHODS

    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))  # the references stay out of other tests
    register_references()
    a = argparse.Namespace(model=str(tiny_bert), batch_size=4, max_length=32, steps=3, repeats=2,
                           precision="fp32", variants="floor,lora,dora,dora-peft")
    out = step_time.bench_task("rte", a)
    assert set(out) == {"floor", "lora", "dora", "dora-peft"}
    assert out["floor"]["x_floor"] == 1.0 and out["lora"]["x_lora"] == 1.0
    assert all(o["steps"] == 2 * 2 and o["median_s"] > 0 for o in out.values())  # 2 timed steps x 2 repeats
    assert out["dora"]["trainable"] == out["dora-peft"]["trainable"] > out["lora"]["trainable"]
    assert "| floor |" in capsys.readouterr().out


def test_scale_benchmark_measures_and_predicts_a_tiny_llama(tmp_path, capsys):
    """The scale benchmark's pieces on a tiny model, in this process (the real run uses a process per mode)."""
    import scale

    from efficientft.memory_model import SIZES, predict

    scale.build("tiny", tmp_path / "tiny")
    rows = [{"size": "tiny", **scale.child(str(tmp_path / "tiny"), mode, 1, 16, 2, 4)}
            for mode in ("fp32", "nf4+ckpt")]
    assert all(r["peak_rss_mb"] > r["runtime_mb"] * 0.5 and r["median_step_s"] > 0 for r in rows)
    assert all(r["memory_p99_mb"] <= r["peak_rss_mb"] + 1 and r["loss"] == r["loss"] for r in rows)
    a = argparse.Namespace(batch=1, seq=16, rank=4, gpu_gb=80.0)
    out = scale.table(rows, a)
    assert "| tiny |" in out and "nf4+ckpt" in out and "largest |error|" in out
    # the formula's terms: 4-bit weights are ~1/8 of fp32's linear weights; checkpointing keeps less
    shape = SIZES["llama-8b"]
    full = predict(shape, "fp32", False, 1, 1024)
    nf4 = predict(shape, "nf4", True, 1, 1024)
    assert nf4.weights < 0.2 * full.weights and nf4.activations < full.activations
    assert 15e9 < shape.params() * 2 < 17e9  # Llama-3-8B: ~8.0 B parameters
    text = scale.predict_table("llama-8b", a)
    assert "| nf4+ckpt |" in text and "fits" in text


def test_memory_model_counts_the_activations_autograd_saves():
    """The formula's activation term against what autograd actually keeps for LoRA q,v on a tiny LLaMA."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from efficientft.memory_model import LlamaShape, predict
    from efficientft.methods import get_method
    from efficientft.methods.base import Context
    from efficientft.models import head_modules, resolve_targets

    shape, seq = LlamaShape(128, 2, 352, 4, 4, vocab=1000), 64
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(**shape.config_kwargs(), pad_token_id=0, num_labels=2))
    method = get_method("lora").from_config({"rank": 4})
    model = method.prepare(model, resolve_targets(model, "qv"), Context(heads=head_modules(model))).train()
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(1, 1000, (1, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    predicted = predict(shape, "fp32", False, 1, seq, rank=4).activations
    assert abs(sum(saved.values()) / predicted - 1) < 0.1, (sum(saved.values()), predicted)


GPU_CHECK_ROWS = [
    *(f"eft run {m}, {p}" for p in ("bf16", "fp16") for m in ("LoRA Q,V λ=4", "DoRA Q,V", "full fine-tuning")),
    "QLoRA NF4, LoRA Q,V r=16, with checkpointing: peak vs prediction",
    "QLoRA NF4, LoRA Q,V r=16, without checkpointing: peak vs prediction",
    "generation: batched greedy vs per-example generate",
    "step time: LoRA Q,V vs the frozen-backbone floor",
    "step time: LoRA Q,V vs full fine-tuning",
]


def _table_rows(text):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| check ")]


def test_gpu_check_rehearses_every_check_on_a_cpu(tmp_path, monkeypatch, capsys):
    """The GPU acceptance run in its CPU rehearsal (``--device cpu --tiny``): every row is there and passes, and
    the table printed is the table written under $OUT."""
    import gpu_check

    monkeypatch.setenv("OUT", str(tmp_path))
    code = gpu_check.main(["--device", "cpu", "--tiny"])
    printed = capsys.readouterr().out
    written = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    rows = _table_rows(written)
    assert [r[0] for r in rows] == GPU_CHECK_ROWS
    assert [r for r in rows if r[1] != "CPU" or r[3] != "pass"] == [], written
    assert code == 0 and written.strip() in printed and "11 passed, 0 failed, 0 skipped" in written
    figures = {r[0]: r[2] for r in rows}
    assert "4/4 identical texts" in figures["generation: batched greedy vs per-example generate"]
    assert "tokens/s" in figures["eft run LoRA Q,V λ=4, fp16"] and "MFU " in figures["eft run LoRA Q,V λ=4, fp16"]


def test_gpu_check_runs_every_check_past_a_failure_and_stops_at_its_budget(tmp_path, monkeypatch, capsys):
    """A check that raises fails its own row (with the error) and the exit status; the others still run. Past
    ``--budget-s`` every section left is a 'skipped: budget' row, not a silent gap."""
    import gpu_check

    ran = []
    monkeypatch.setattr(gpu_check.Check, "_train", lambda self, what, m, p: self.row(what, "stub", True))
    monkeypatch.setattr(gpu_check.Check, "qlora", lambda self: ran.append("qlora"))
    monkeypatch.setattr(gpu_check.Check, "generation", lambda self: 1 / 0)
    monkeypatch.setattr(gpu_check.Check, "step_time", lambda self: ran.append("step time"))
    code = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "t.md")])
    rows = _table_rows((tmp_path / "t.md").read_text(encoding="utf-8"))
    assert code == 1 and ran == ["qlora", "step time"] and len(rows) == 7
    assert rows[-1] == ["generation: batched greedy vs per-example generate", "CPU",
                        "ZeroDivisionError: division by zero", "FAIL"]
    capsys.readouterr()
    code = gpu_check.main(["--device", "cpu", "--tiny", "--budget-s", "0", "--out", str(tmp_path / "b.md")])
    rows = _table_rows((tmp_path / "b.md").read_text(encoding="utf-8"))
    assert code == 0 and len(rows) == 9 and {r[3] for r in rows} == {"skipped: budget"}
    assert rows[0][0] == "eft run LoRA Q,V λ=4, bf16" and rows[-1][0] == "step time"


# ---------------------------------------------------------------------------------------------- --compile (issue 26 §2)
def _losses(store, key):
    return [v for kind, _, name, v in store.curves(key) if kind == "train" and name == "loss"]


def test_compile_trains_like_eager_resumes_exactly_and_saves_the_modules_own_names(tiny_bert, tmp_path, monkeypatch):
    """A compiled run (tiny BERT with dropout, LoRA q,v) has the eager run's key and losses (1e-5 relative), is
    recorded as compiled, resumes exactly from a checkpoint, and its checkpoint and export name every tensor as
    the module does (no ``_orig_mod.`` of the compiled wrapper)."""
    from safetensors.torch import load_file

    from efficientft.checkpoint import TrainState, folder_for, latest
    from efficientft.resolve import run_key
    from efficientft.store import Store
    from efficientft.train import run
    from tests.test_checkpoint import Killed, _kill_at

    def cfg(**kw):
        return tiny_config(tiny_bert, steps=6, batch_size=4, max_train=16, max_eval=8, max_length=32,
                           checkpoint_every=2, **kw)

    assert run_key(cfg(compile=True)) == run_key(cfg())  # the same computation, the same key
    eager = run(cfg(), Store(tmp_path / "e.sqlite"))
    compiled = run(cfg(compile=True, export_dir=str(tmp_path / "x")), Store(tmp_path / "c.sqlite"))
    want, got = _losses(Store(tmp_path / "e.sqlite"), eager["run_key"]), \
        _losses(Store(tmp_path / "c.sqlite"), compiled["run_key"])
    assert len(got) == 6 and all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(want, got, strict=True)), (want, got)
    assert compiled["details"]["compiled"]["backend"] == "inductor" and "compiled" not in eager["details"]
    exported = [n for f in (tmp_path / "x").glob("*.safetensors") for n in load_file(str(f))]
    assert exported and not [n for n in exported if "_orig_mod" in n], exported

    db = tmp_path / "r.sqlite"
    restore = _kill_at(monkeypatch, 4)
    with pytest.raises(Killed):
        run(cfg(compile=True), Store(db))
    restore()
    saved = TrainState.read(latest(folder_for(db, compiled["run_key"])))
    assert saved.step == 2 and saved.blobs["model"] and not [n for n in saved.blobs["model"] if "_orig_mod" in n]
    resumed = run(cfg(compile=True), Store(db))
    assert resumed["details"]["resumed_from_step"] == 2
    assert resumed["scores"] == compiled["scores"] and _losses(Store(db), resumed["run_key"]) == got


def test_compile_refuses_what_it_does_not_support_in_one_line(tiny_bert, tmp_path, capsys, monkeypatch):
    from efficientft.cli import main

    args = ["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "1", "--max-train", "8", "--max-eval", "4",
            "--store", str(tmp_path / "s.sqlite"), "--compile"]
    assert main([*args, "--feature-cache", "--targets", r"re:.*layer\.1\.attention\.self\.(query|value)"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("eft run: error: compile does not work with feature_cache (the cache swaps layers' forward during "
                   "the step); drop --compile or --feature-cache.")
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler on the PATH
    monkeypatch.setenv("CXX", "")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("eft run: error: compile needs a C++ compiler on a CPU"), err


def test_pilot_table_reads_the_curve_and_sets_the_budget_by_its_rule():
    """benchmarks/pilot_table.py: "clearly above from" needs the margin to hold from there on; the budget is 1.2 x the
    step from which 90 % of the run's gain holds, rounded up to 100; a run that never clears the margin gets none, nor
    does one whose selection score clears it while its dev score stays at the baseline (RTE in the pilot)."""
    import pilot_table

    curves = {"a": [0.70, 0.86, 0.86, 0.88], "b": [0.0, 0.25, 0.1, 0.15], "c": [0.56, 0.58, 0.59, 0.59]}  # sst2; cola; rte

    class Store:
        def runs(self, status):
            return [{"run_key": "a", "config": {"task": "sst2", "lr": 2e-3, "steps": 400},
                     "scores": {"dev/accuracy": 0.87, "selection/accuracy": 0.88}, "details": {}},
                    {"run_key": "b", "config": {"task": "cola", "lr": 2e-3, "steps": 400},
                     "scores": {"dev/mcc": 0.2, "selection/mcc": 0.15}, "details": {"baselines": {"dev/mcc": 0.0}}},
                    {"run_key": "c", "config": {"task": "rte", "lr": 2e-3, "steps": 400}, "cost": {"mean_step_s": 0.9},
                     "scores": {"dev/accuracy": 0.52, "selection/accuracy": 0.59},
                     "details": {"baselines": {"dev/accuracy": 0.5271}}}]

        def curves(self, key):
            return [("eval", 100 * (i + 1), f"selection/{'mcc' if key == 'b' else 'accuracy'}", v)
                    for i, v in enumerate(curves[key][:-1])] + [("train", 100, "loss", 1.0)]

    cola, rte, sst2 = pilot_table.rows(Store())
    assert sst2["baseline"] == 0.5092  # the record holds none: the dev majority share
    assert (sst2["clear"], sst2["near"], sst2["budget"]) == (100, 200, 300)  # gain 0.371: 90 % is 0.843
    assert (cola["clear"], cola["budget"]) == (None, None)  # 0.25 at 200 falls back to 0.1: never clearly above
    assert rte["clear"] == 200 and (rte["dev_learned"], rte["budget"]) == (False, None)  # selection 58 > 52.7 + 5; dev 52
    table = pilot_table.markdown([sst2, cola, rte]).splitlines()
    assert table[0].count("|") == table[1].count("|") == table[4].count("|")
    assert table[2].endswith("| 87.0 | – | 300 |") and "| never |" in table[3]
    assert table[4].endswith("| 52.0 (not above the margin) | 0.90 | – |")
