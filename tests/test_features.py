"""Frozen-feature caching (``feature_cache``) and length bucketing (``bucket``): what they change and what not."""

import numpy as np
import pytest
import torch

from efficientft.data import eval_batches
from efficientft.errors import ConfigError
from efficientft.features import FeatureCache
from efficientft.resolve import run_key
from efficientft.train import forward, prepare, run
from tests.conftest import tiny_config

TOP = r"re:.*layer\.1\..*(query|value)"  # LoRA on the top layer only: layer 0 and the embeddings stay frozen


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory, tiny_bert):
    """The tiny BERT without dropout: with nothing random in the forward, caching must not change training."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("still-bert")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(path))
    return path


def _logits(p, split="dev"):
    p.model.eval()
    out = {}
    with torch.no_grad():
        for idx, batch in eval_batches(p.evals[split], 5, p.info["pad_id"]):
            batch = {k: v for k, v in batch.items() if k != "labels"}
            for i, row in zip(idx, forward(p, split, idx, batch).logits, strict=True):
                out[int(i)] = row
    return torch.stack([out[i] for i in sorted(out)])


@pytest.mark.parametrize("which", ["bert", "llama"])
def test_cached_forward_gives_the_same_logits_in_eval_mode(which, tiny_bert, tiny_llama):
    path, top = (tiny_bert, TOP) if which == "bert" else (tiny_llama, r"re:.*layers\.1\..*(q_proj|v_proj)")
    cfg = tiny_config(path, targets=top, max_eval=24)
    plain, cached = prepare(cfg), prepare(cfg.replace(feature_cache=True))
    assert cached.features.k == 1 and cached.info["feature_cache"]["first_trained_layer"] == 1
    torch.testing.assert_close(_logits(cached), _logits(plain), rtol=1e-5, atol=1e-6)
    assert all(f is not None for f in cached.features.store["dev"])
    # served twice (the second time from the cache alone): still the same
    torch.testing.assert_close(_logits(cached), _logits(plain), rtol=1e-5, atol=1e-6)
    # the model is left as it was: no layer keeps a patched forward
    assert not any("forward" in m.__dict__ for m in cached.features.layers)


def test_training_is_unchanged_on_a_model_without_dropout(still_bert, store):
    cfg = tiny_config(still_bert, targets=TOP, steps=8, eval_every=4)  # 8 steps = 2 epochs of 32 examples
    plain = run(cfg, store)
    cached = run(cfg.replace(feature_cache=True), store)
    assert cached["run_key"] != plain["run_key"] and cached["config"]["feature_cache"] is True
    loss = lambda r: [v for kind, s, n, v in store.curves(r["run_key"]) if n == "loss"]  # noqa: E731
    np.testing.assert_allclose(loss(cached), loss(plain), rtol=1e-5)
    assert cached["scores"]["dev/accuracy"] == plain["scores"]["dev/accuracy"]
    # every train and dev example computed once: 32 + 32 rows of at most 48 tokens × hidden 32 (fp32)
    assert 0 < cached["cost"]["feature_cache_mb"] <= 64 * 48 * 32 * 4 / 2**20


def test_features_are_computed_once_per_example(tiny_bert, monkeypatch):
    p = prepare(tiny_config(tiny_bert, targets=TOP, feature_cache=True, steps=8))
    seen = []
    real = FeatureCache._compute

    def counting(self, split, idx):
        seen.extend((split, i) for i in idx)
        return real(self, split, idx)

    monkeypatch.setattr(FeatureCache, "_compute", counting)
    from efficientft.train import train

    train(p, progress=False)  # 2 epochs, then one evaluation
    assert sorted(seen) == sorted({*seen}) and len(seen) == 31 + 32  # example 0 of train was computed at set-up


def test_refused_when_layer_0_trains(tiny_bert):
    with pytest.raises(ConfigError, match="trainable parameter lives in layer 0"):
        prepare(tiny_config(tiny_bert, targets="qv", feature_cache=True))


def test_refused_when_a_trained_module_runs_below_the_first_trained_layer(tiny_bert):
    p = prepare(tiny_config(tiny_bert, targets=TOP))
    p.model.base_model.model.bert.embeddings.LayerNorm.weight.requires_grad_(True)
    cache = FeatureCache(p.model)
    cache.add_split("train", p.train, p.info["pad_id"])
    with pytest.raises(ConfigError, match="embeddings.LayerNorm is trained and runs before layer 1"):
        cache.check("train")


def test_bucketing_cuts_padding_and_keeps_every_example(tiny_bert):
    cfg = tiny_config(tiny_bert, max_train=400, batch_size=8)
    plain, bucketed = prepare(cfg).batches(), prepare(cfg.replace(bucket=True)).batches()
    assert bucketed.bucket and not plain.bucket

    def padding(b):
        order = b.epoch_order(0)
        lengths = b.enc.lengths
        real = sum(lengths[i].sum() for i in order)
        padded = sum(len(i) * lengths[i].max() for i in order)
        return 1 - real / padded, sorted(np.concatenate(order).tolist())

    frac_plain, seen_plain = padding(plain)
    frac_bucket, seen_bucket = padding(bucketed)
    assert seen_bucket == seen_plain == list(range(400))
    assert frac_bucket < 0.5 * frac_plain
    assert run_key(cfg) != run_key(cfg.replace(bucket=True))
