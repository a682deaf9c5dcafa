"""Backbone reuse across runs: a warm load equals a disk load, head initialisation included, and is private."""

import pytest
import torch
from transformers import BertConfig, BertModel

from efficientft.models import loading
from efficientft.models.loading import clear_backbone_cache, load_model
from efficientft.train import run
from tests.conftest import tiny_config


def _load(path, num_labels, seed, cold):
    """A disk load (``cold``: the cache emptied first), or a load from memory (the model loaded twice before)."""
    clear_backbone_cache()
    torch.manual_seed(seed)
    first = load_model(str(path), num_labels).model.state_dict()
    if cold:
        assert not loading._BACKBONES  # one load keeps nothing: a single job pays no memory for the cache
        return first
    load_model(str(path), num_labels)  # the second load keeps the checkpoint's weights
    assert len(loading._BACKBONES) == 1
    torch.manual_seed(seed)
    return load_model(str(path), num_labels).model.state_dict()


def _equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def headless_bert(tmp_path, tiny_bert):
    """A checkpoint without a classification head (as the bundled MiniLM): the head is initialised at load."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("which,num_labels", [("headless", 2), ("bert", 3), ("llama", 2), ("gpt2", 2)])
def test_warm_load_equals_cold_load_for_every_seed(which, num_labels, headless_bert, tiny_bert, tiny_llama,
                                                   tiny_gpt2):
    path = {"headless": headless_bert, "bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}[which]
    heads = {}
    for seed in (0, 1):
        cold = _load(path, num_labels, seed, cold=True)
        warm = _load(path, num_labels, seed, cold=False)
        _equal(warm, cold)
        heads[seed] = [v for k, v in cold.items() if k.startswith(("classifier", "score"))][0]
    if which in ("headless", "bert"):  # the head is new (missing, or 2 -> 3 labels): it depends on the seed
        assert not torch.equal(heads[0], heads[1])


def test_warm_models_own_their_tensors(tiny_bert):
    clear_backbone_cache()
    first = load_model(str(tiny_bert), 2).model
    load_model(str(tiny_bert), 2)
    second = load_model(str(tiny_bert), 2).model  # from memory
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)  # as full fine-tuning would
    third = load_model(str(tiny_bert), 2).model
    _equal(third.state_dict(), first.state_dict())


def test_warm_models_carry_their_path(tiny_bert):
    """PEFT reads ``model.name_or_path`` as the base model's id; "None" made it try the hub on every save."""
    clear_backbone_cache()
    loads = [load_model(str(tiny_bert), 2) for _ in range(3)]  # cold, cold (kept), from memory
    for loaded in loads:
        assert loaded.model.name_or_path == loaded.model.config.name_or_path == loaded.path


def test_cache_keeps_one_backbone(tiny_bert, tiny_llama):
    clear_backbone_cache()
    for path in (tiny_bert, tiny_bert, tiny_llama, tiny_llama):
        load_model(str(path), 2)
    assert [k[0] for k in loading._BACKBONES] == [str(tiny_llama)]


def test_run_after_warm_load_gives_the_same_scores_as_a_cold_one(headless_bert, store):
    cfg = tiny_config(headless_bert, method="lora", targets="qv", seed=2, eval_every=2)
    clear_backbone_cache()
    cold = run(cfg, store)
    curve = store.curves(cold["run_key"])
    run(cfg, store)  # keeps the backbone
    warm = run(cfg, store)
    assert warm["scores"] == cold["scores"]
    assert store.curves(warm["run_key"]) == curve


def test_a_model_resaved_with_the_same_sizes_and_times_is_not_served_from_the_cache(tmp_path, tiny_bert):
    """The cache was keyed by each file's size and mtime: other weights written within the clock's granularity
    (or with their times set back) were served stale. It is keyed by content now."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "m"
    shutil.copytree(tiny_bert, model)
    weights = model / "model.safetensors"
    clear_backbone_cache()
    load_model(str(model), 2)
    load_model(str(model), 2)
    assert len(loading._BACKBONES) == 1  # kept: the next load of the same model comes from memory
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("query.weight"))
    tensors[name] = tensors[name] + 1.0
    st = weights.stat()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    loaded = load_model(str(model), 2).model.state_dict()
    assert torch.equal(loaded[name], tensors[name])


class _TokenTagger:
    """A head spec that is no task kind: the loader builds whatever head it is told (models know no tasks)."""

    name = "token-tagger"

    def model_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def configure(self, config, num_labels):
        config.num_labels = num_labels

    def configure_tokenizer(self, tokenizer):
        tokenizer.padding_side = "left"


def test_the_loader_builds_the_head_a_head_spec_names_and_caches_heads_apart(tiny_bert):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    from efficientft.models.loading import LoadOptions

    clear_backbone_cache()
    for _ in range(3):  # cold, cold (kept), from memory
        tagged = load_model(str(tiny_bert), 5, LoadOptions(), head=_TokenTagger())
        assert type(tagged.model) is BertForTokenClassification and tagged.model.config.num_labels == 5
    assert tagged.tokenizer.padding_side == "left"
    classified = load_model(str(tiny_bert), 5).model  # the default head: sequence classification
    assert type(classified) is BertForSequenceClassification and classified.config.problem_type == (
        "single_label_classification")
    half = load_model(str(tiny_bert), 5, LoadOptions(dtype=torch.bfloat16), head=_TokenTagger()).model
    assert type(half) is BertForTokenClassification and next(half.parameters()).dtype == torch.bfloat16
    clear_backbone_cache()
