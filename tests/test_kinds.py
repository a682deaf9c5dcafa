"""The task-kind contract: what classification and generation each answer, the SFT loss masks, and accumulation
normalised by target tokens."""

from __future__ import annotations

import pytest
import torch

from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.resolve import resolve, run_key
from efficientft.step import accumulate
from efficientft.tasks import get_task
from efficientft.tasks.generative_kind import GENERATION, IGNORE, encode_sft
from efficientft.tasks.instruct import InstructExample
from efficientft.tasks.kinds import CLASSIFICATION, TaskKind
from efficientft.train import prepare
from tests.gen_fixtures import gen_config


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(minilm_dir))
    GENERATION.configure_tokenizer(t)  # [SEP] is EOS for this vocabulary
    return t


EX = InstructExample("t:0", "reverse: cat dog", "", "dog cat", "dog cat")


def _ids(tok, *words):
    return tok.convert_tokens_to_ids(list(words))


def test_response_only_labels_are_exact(tok):
    enc = encode_sft([EX], tok, "plain", 64, train_on_inputs=False)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    prompt = [cls, *_ids(tok, "reverse", ":", "cat", "dog"), sep]  # "reverse: cat dog\n" as generation reads it
    response = [*_ids(tok, "dog", "cat"), sep]  # + EOS
    assert enc.ids[0].tolist() == prompt + response
    assert enc.targets[0].tolist() == [IGNORE] * 6 + response
    assert enc.stats == {"examples": 1, "truncated": 0, "dropped_no_target": 0, "cutoff_len": 64}


def test_train_on_inputs_labels_every_token(tok):
    enc = encode_sft([EX], tok, "plain", 64, train_on_inputs=True)
    assert enc.targets[0].tolist() == enc.ids[0].tolist()


def test_cutoff_truncates_and_counts_and_drops_examples_without_target(tok):
    cut = encode_sft([EX], tok, "plain", 7, train_on_inputs=False)  # 6 prompt tokens + 1 of the response
    assert cut.stats["truncated"] == 1 and cut.targets[0].tolist() == [IGNORE] * 6 + _ids(tok, "dog")
    gone = encode_sft([EX, EX], tok, "plain", 6, train_on_inputs=False)  # the prompt fills the cutoff
    assert len(gone) == 0 and gone.stats["dropped_no_target"] == 2 and gone.stats["truncated"] == 2


def test_collate_pads_labels_with_ignore_and_weight_counts_target_tokens(tok):
    short = InstructExample("t:1", "reverse: a b", "", "b a", "b a")
    enc = encode_sft([EX, short, EX], tok, "plain", 64, train_on_inputs=False)
    batch = enc.collate([0, 1], tok.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert GENERATION.batch_weight(batch) == 3 + 3  # "dog cat [SEP]" and "b a [SEP]"
    assert CLASSIFICATION.batch_weight(batch) == 2  # classification: examples


def _grads(p) -> dict[str, torch.Tensor]:
    out = {n: q.grad.clone() for n, q in p.model.named_parameters() if q.grad is not None}
    p.model.zero_grad(set_to_none=True)
    return out


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(causal_llama, monkeypatch):
    """Micro-batches with unequal target tokens: weighted by tokens, their accumulated gradient is the big batch's.
    Weighted by examples (the classification rule) it is not: the test can fail."""
    p = prepare(gen_config(causal_llama, method="full", targets="qv"))
    enc, pad = p.train, p.info["pad_id"]
    lengths = [int((t[1:] != IGNORE).sum()) for t in enc.targets]
    a = [i for i in range(len(enc)) if lengths[i] == min(lengths)][:1]
    b = [i for i in range(len(enc)) if lengths[i] == max(lengths)][:3]
    assert min(lengths) != max(lengths)
    accumulate(p, [(a + b, enc.collate(a + b, pad))], 1)
    whole = _grads(p)
    micro = [(a, enc.collate(a, pad)), (b, enc.collate(b, pad))]
    accumulate(p, micro, 1)
    parts = _grads(p)
    assert whole.keys() == parts.keys() and whole
    for n in whole:
        torch.testing.assert_close(parts[n], whole[n], rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(type(GENERATION), "batch_weight", TaskKind.batch_weight)  # per example: wrong here
    accumulate(p, micro, 1)
    wrong = _grads(p)
    assert any(not torch.allclose(wrong[n], whole[n], rtol=1e-3, atol=1e-6) for n in whole)


def test_the_kind_contract():
    for kind in (CLASSIFICATION, GENERATION):
        assert isinstance(kind, TaskKind) and kind.name
        assert kind.model_class().__name__.startswith("AutoModelFor")
    assert (CLASSIFICATION.peft_task_type, GENERATION.peft_task_type) == ("SEQ_CLS", "CAUSAL_LM")
    assert CLASSIFICATION.supports_feature_cache and not GENERATION.supports_feature_cache
    assert GENERATION.higher_is_better("dev/exact_match") and not GENERATION.higher_is_better("forgetting/lm_loss")
    assert get_task("rte").kind is CLASSIFICATION and get_task("gsm8k").kind is GENERATION
    assert get_task("synthetic-reverse").kind is GENERATION


def test_a_causal_lm_has_no_head_and_gpt2s_tied_lm_head_stays_frozen(causal_gpt2):
    for method, targets in (("lora", "qv"), ("full", "qv")):
        p = prepare(gen_config(causal_gpt2, method=method, targets=targets))
        assert p.method.ctx.heads == [] and p.method.ctx.peft_task_type == "CAUSAL_LM"
        trained = [n for n, q in p.model.named_parameters() if q.requires_grad]
        assert trained and not [n for n in trained if "lm_head" in n or "wte" in n], trained
        assert not [n for n, _ in p.model.named_modules() if "modules_to_save" in n]


def test_classification_is_unchanged_by_the_kinds(tiny_bert):
    p = prepare(RunConfig(task="rte", model=str(tiny_bert), steps=1, max_train=8, max_eval=8, progress=False))
    assert p.method.ctx.heads == ["classifier"] and p.method.ctx.peft_task_type == "SEQ_CLS"
    assert p.info["task_kind"] == "classification" and "encoding" not in p.info


def test_generation_settings_on_a_classification_task_are_refused():
    with pytest.raises(ConfigError, match="template is a setting of generation tasks; task 'rte' is a "
                                          "classification task"):
        run_key(RunConfig(task="rte", template="alpaca"))
    with pytest.raises(ConfigError, match="train_on_inputs is a setting of generation tasks"):
        run_key(RunConfig(task="stsb", train_on_inputs=True))


def test_feature_cache_is_refused_for_generation_in_one_line(causal_llama):
    with pytest.raises(ConfigError, match=r"^feature_cache does not work with generation tasks such as "
                                          r"'synthetic-reverse': .*KV cache.*; drop --feature-cache\.$"):
        prepare(gen_config(causal_llama, feature_cache=True))


def test_the_template_is_in_the_run_key_and_defaults_per_task():
    base = RunConfig(task="synthetic-reverse")
    assert resolve(base).template == "plain" and resolve(RunConfig(task="gsm8k")).template == "alpaca"
    assert run_key(base) == run_key(base.replace(template="plain"))  # the default spelled out: the same experiment
    assert run_key(base) != run_key(base.replace(template="alpaca"))
    assert run_key(base) != run_key(base.replace(train_on_inputs=True))
    with pytest.raises(ConfigError, match="unknown prompt template 'alpacca'. Did you mean 'alpaca'?"):
        run_key(base.replace(template="alpacca"))


def test_a_method_that_declares_no_generation_is_refused_in_one_line(causal_llama, monkeypatch):
    import dataclasses

    from efficientft.methods import get_method

    lora = get_method("lora")
    monkeypatch.setattr(lora, "capabilities", dataclasses.replace(lora.capabilities, generation=False))
    with pytest.raises(ConfigError, match=r"^method 'lora' does not train generation tasks \(its capabilities "
                                          r"declare generation: False\); choose another method"):
        prepare(gen_config(causal_llama))


# ------------------------------------------------------------------- the kinds evaluate through a context (issue 24)
def _context(p):
    """Exactly what :class:`efficientft.tasks.base.EvalContext` names, and nothing of the loop's own object."""
    from types import SimpleNamespace

    return SimpleNamespace(cfg=p.cfg, task=p.task, model=p.model, tokenizer=p.tokenizer, train=p.train, evals=p.evals,
                           kind_state=p.kind_state, device=p.device, pad_id=p.info["pad_id"], autocast=p.autocast,
                           forward=p.forward)


def test_a_kind_evaluates_through_the_context_and_returns_its_outcome(causal_llama, tiny_bert):
    from tests.conftest import tiny_config

    p = prepare(resolve(gen_config(causal_llama)))
    ctx = _context(p)
    before = dict(vars(ctx))
    out = GENERATION.evaluate(ctx, "dev")
    assert set(out.scores) == {"exact_match"} and 0.0 <= out.scores["exact_match"] <= 1.0
    assert len(out.predictions) == len(p.evals["dev"]) and {"id", "generated", "extracted", "gold", "correct"} <= set(
        out.predictions[0])
    assert set(out.cost) == {"generation_s", "generated_tokens"} and out.cost["generated_tokens"] > 0
    summary = GENERATION.summarise(ctx, {"dev/exact_match": out.scores["exact_match"]})
    assert summary["forgetting/lm_loss_before"] == p.info["forgetting"]["lm_loss_before"]
    assert summary["forgetting/increase"] == pytest.approx(0.0, abs=1e-6)  # not trained: the same loss
    assert set(out.baselines) == {"exact_match"} and isinstance(out.collapsed, bool)  # the trivial answer's score
    assert vars(ctx) == before and p.predictions == {} and p.eval_cost == {} and p.baselines == {}  # wrote nothing

    p = prepare(resolve(tiny_config(tiny_bert)))
    out = CLASSIFICATION.evaluate(_context(p), "dev")
    assert set(out.scores) == {"accuracy"} and out.predictions is None and out.cost == {}
    assert set(out.baselines) == {"accuracy"} and isinstance(out.collapsed, bool)


def test_the_tasks_layer_imports_nothing_of_the_loop():
    """Not at module level, not in a function, not under TYPE_CHECKING (``lint-imports`` checks the whole graph)."""
    import ast
    from pathlib import Path

    import efficientft.tasks

    loop = {"train", "step", "checkpoint", "recorder", "logger", "trackers", "features", "meters", "sharding"}
    found = []
    for path in Path(efficientft.tasks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").split(".")[0] in loop:
                found.append(f"{path.name}:{node.lineno} {node.module}")
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("efficientft.") \
                    and node.module.split(".")[1] in loop:
                found.append(f"{path.name}:{node.lineno} {node.module}")
    assert found == []
