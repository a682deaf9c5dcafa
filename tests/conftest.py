"""Shared fixtures: tiny randomly initialised models built from configs, the real GLUE folder, a results store."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("EFT_DATA_DIR") or ROOT.parent / "shared" / "data" / "glue")
os.environ.setdefault("EFT_DATA_DIR", str(GLUE))
os.environ.setdefault("EFT_CACHE_DIR", tempfile.mkdtemp(prefix="eft-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*kernels.*")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE / "RTE" / "train.tsv").is_file():
        raise RuntimeError(f"the GLUE folder is expected at {GLUE} (set EFT_DATA_DIR)")
    return GLUE


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from efficientft.models import bundled_minilm

    return bundled_minilm()


def _save_tiny(path: Path, model, minilm: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_dir) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), BertForSequenceClassification(cfg), minilm_dir)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory, minilm_dir) -> Path:
    """tiny_bert without dropout: runs that must match exactly across process counts or accumulation."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert-nodrop"), BertForSequenceClassification(cfg), minilm_dir)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm_dir) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), LlamaForSequenceClassification(cfg), minilm_dir)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, minilm_dir) -> Path:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), GPT2ForSequenceClassification(cfg), minilm_dir)


@pytest.fixture
def store(tmp_path):
    from efficientft.store import Store

    return Store(tmp_path / "runs.sqlite")


def tiny_config(model: Path, **kw):
    """A run of a few steps on a small RTE subset: seconds on a CPU."""
    from efficientft.config import RunConfig

    base = dict(task="rte", model=str(model), steps=4, batch_size=8, max_train=32, max_eval=32, max_length=48,
                lr=1e-3, progress=False, method_args={"rank": 4} if kw.get("method", "lora") != "full" else {})
    base.update(kw)
    return RunConfig(**base)


def classifier_forward_args(model: Path) -> set[str]:
    """The argument names of a sequence classifier's forward and its backbone's (built on the meta device)."""
    import inspect

    from transformers import AutoConfig, AutoModelForSequenceClassification

    with torch.device("meta"):
        m = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(model)))
    return {a for f in (m.forward, m.base_model.forward) for a in inspect.signature(f).parameters}


def skip_where_the_model_lacks_what_the_method_feeds(name: str, model: Path) -> None:
    """Skip a method on a classifier that cannot take an argument the method feeds it (``classifier_inputs``: prefix
    tuning's past_key_values, which BERT's forward does not name from transformers 5.25); the one-line refusal
    itself is checked by the conformance matrix."""
    from efficientft.methods import METHODS

    lacking = set(METHODS.get(name).capabilities.classifier_inputs) - classifier_forward_args(model)
    if lacking:
        pytest.skip(f"{name} feeds {', '.join(sorted(lacking))}, which this model's forward does not take")


@pytest.fixture(scope="session")
def report_store(tmp_path_factory, tiny_bert, glue_dir):
    """A store of ~30 real tiny runs (2 tasks, several methods / targets / λ / lr, 3 seeds) for the report tests."""
    from tests.report_runs import fill

    return fill(tmp_path_factory.mktemp("report") / "runs.sqlite", tiny_bert)


@pytest.fixture(scope="session")
def report_written(report_store, tmp_path_factory):
    """(Report, folder) of ``eft report`` in every format, plots included, from :func:`report_store`."""
    from efficientft.report.build import build, write

    out = tmp_path_factory.mktemp("report-out")
    rep = build(report_store)
    write(rep, report_store, out)
    return rep, out


from tests.gen_fixtures import causal_gpt2, causal_llama  # noqa: E402, F401 - tiny causal LMs for generation tests
