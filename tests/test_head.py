"""The classifier's head (issue 25 §1): how a classifier reads the encoder, declared per architecture.

``mean`` is the masked mean of the last hidden states over real tokens (padding left out), ``cls-pooler`` BERT's
[CLS] through its frozen pooler (what every run computed before), ``cls-pooler-trained`` the same with the pooler
trained and counted, ``model`` the architecture's own head, ``auto`` the declared default (mean for a
sentence-transformers folder such as the bundled MiniLM). The key changes only where the head did.
"""

import json

import pytest
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

from efficientft.cli import main
from efficientft.config import RunConfig
from efficientft.errors import ConfigError
from efficientft.methods import get_method
from efficientft.methods.base import Context
from efficientft.models import head_modules, load_model, resolve_targets
from efficientft.resolve import resolve, run_key
from efficientft.train import prepare, train
from tests.conftest import _save_tiny, tiny_config

POOLER = 32 * 32 + 32  # the tiny BERT's pooler: dense 32 x 32 and its bias


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory, minilm_dir):
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-roberta"), RobertaForSequenceClassification(cfg), minilm_dir)


def _padded_batch(model_dir):
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    batch = tok(["a short one.", "a much longer sentence that needs several more tokens than the first."],
                padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the first row is padded
    return batch


def test_mean_is_the_masked_mean_of_real_tokens_then_the_classifier(tiny_bert):
    model = load_model(str(tiny_bert), 2, readout="mean").model.eval()
    batch = _padded_batch(tiny_bert)
    with torch.no_grad():
        got = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state  # the encoder's output (the pooler's is beside it)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        want = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        over_padding = model.classifier(hidden.mean(1))  # a mean that counts the padding tokens
        cls = model.classifier(torch.tanh(load_model(str(tiny_bert), 2).model.bert.pooler.dense(hidden[:, 0])))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], over_padding[0], atol=1e-4)
    assert not torch.allclose(got, cls, atol=1e-4)
    assert "pooler.dense.weight" not in "".join(n for n, _ in model.named_parameters())


def test_auto_resolves_per_architecture(tiny_bert, tiny_llama, tiny_roberta, minilm_dir):
    assert resolve(RunConfig(task="rte")).head == "mean"  # the bundled MiniLM: a sentence-transformers folder
    assert resolve(RunConfig(task="rte", model=str(minilm_dir))).head == "mean"
    assert resolve(tiny_config(tiny_bert)).head == "cls-pooler"
    assert resolve(tiny_config(tiny_bert, head="model")).head == "cls-pooler"  # BERT's own head: one spelling
    assert resolve(tiny_config(tiny_roberta)).head == "model"
    assert resolve(tiny_config(tiny_llama)).head == "model"


def test_the_key_changes_only_where_the_head_changed(tiny_bert):
    plain = tiny_config(tiny_bert)
    keys = {h: run_key(plain.replace(head=h)) for h in ("auto", "cls-pooler", "model", "cls-pooler-trained", "mean")}
    assert keys["auto"] == keys["cls-pooler"] == keys["model"]
    assert "head" not in resolve(plain.replace(head="cls-pooler")).identity()
    assert len({keys["cls-pooler"], keys["cls-pooler-trained"], keys["mean"]}) == 3
    assert resolve(plain.replace(head="mean")).identity()["head"] == "mean"
    # the key of a stored run on the bundled model (tests/test_schema.py): unchanged with BERT's transformers head
    assert run_key(RunConfig(task="rte", head="cls-pooler")) == "42cc1a40811c004f"
    assert run_key(RunConfig(task="rte")) != "42cc1a40811c004f"  # auto is mean there: another experiment


@pytest.mark.parametrize("model, head, msg", [
    ("llama", "mean", "head 'mean' does not fit model '{path}' (llama): it has no pooler to train or replace; its "
                      "classifier is its own transformers head; accepted: auto, model."),
    ("roberta", "cls-pooler", "head 'cls-pooler' does not fit model '{path}' (roberta): it has no pooler to train or "
                              "replace; its classifier is its own transformers head; accepted: auto, model."),
    ("roberta", "cls-pooler-trained", "head 'cls-pooler-trained' does not fit model '{path}' (roberta)"),
])
def test_a_head_the_architecture_lacks_is_one_line_and_exit_2(model, head, msg, tiny_llama, tiny_roberta, tmp_path,
                                                               capsys, monkeypatch):
    import efficientft.train as train_mod

    path = str({"llama": tiny_llama, "roberta": tiny_roberta}[model])
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    code = main(["run", "--model", path, "--task", "rte", "--head", head, "--steps", "1", "--no-progress",
                 "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert msg.format(path=path) in err


def test_head_refusals_of_the_setting_itself(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--task", "rte", "--head", "cls"])
    assert e.value.code == 2
    assert "argument --head: invalid choice: 'cls' (choose from 'auto', 'cls-pooler', 'cls-pooler-trained', " \
           "'mean', 'model')" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^head 'cls' is not known\..* Accepted: auto, cls-pooler, "
                                          r"cls-pooler-trained, mean, model\.$"):
        RunConfig.from_dict({"task": "rte", "head": "cls"})
    with pytest.raises(ConfigError, match=r"^head is a setting of classification tasks .*drop head 'mean'\.$"):
        resolve(RunConfig(task="synthetic-reverse", head="mean"))


def _prepared(model_dir, head, **kw):
    p = prepare(tiny_config(model_dir, head=head, steps=3, lr=5e-2, **kw))
    for m in p.model.modules():  # three steps on a batch, the same logits before and after an export
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return p


def _pooler(p):
    return {n: t.detach().clone() for n, t in p.model.named_parameters() if ".pooler." in n}


def test_cls_pooler_trained_trains_and_counts_the_pooler_cls_pooler_leaves_it(tiny_bert, tmp_path, capsys):
    frozen, trained = _prepared(tiny_bert, "cls-pooler"), _prepared(tiny_bert, "cls-pooler-trained")
    n_frozen = frozen.method.trainable_parameters(frozen.model)
    assert trained.method.trainable_parameters(trained.model) == n_frozen + POOLER
    assert head_modules(trained.model.base_model.model) == ["classifier", "bert.pooler.dense"]
    for p in (frozen, trained):
        before = _pooler(p)
        train(p, progress=False)
        moved = [n for n, t in _pooler(p).items() if not torch.equal(t, before[n])]
        assert bool(moved) == (p is trained), moved
    assert "head" not in trained.info  # the record's config names the head that ran
    assert prepare(tiny_config(tiny_bert, steps=1)).info["head"] == "cls-pooler"  # unresolved: auto chose it
    # eft run prints the count every table shows, the pooler in it
    args = ["run", "--model", str(tiny_bert), "--task", "rte", "--steps", "1", "--max-train", "8", "--max-eval", "8",
            "--max-length", "32", "--rank", "4", "--no-progress", "--json"]
    counts = {}
    for head in ("cls-pooler", "cls-pooler-trained"):
        assert main([*args, "--head", head, "--store", str(tmp_path / f"{head}.sqlite")]) == 0
        out = capsys.readouterr().out
        counts[head] = json.loads(out)["cost"]["trainable_params"]
    assert counts == {"cls-pooler": n_frozen, "cls-pooler-trained": n_frozen + POOLER}


@pytest.mark.parametrize("method", ["lora", "full", "sift"])  # a PEFT adapter, a model folder, our own format
@pytest.mark.parametrize("head", ["cls-pooler", "cls-pooler-trained", "mean"])
def test_export_then_reload_gives_the_same_logits(head, method, tiny_bert, tmp_path):
    from efficientft.methods import METHODS

    p = _prepared(tiny_bert, head, method=method, method_args=METHODS.get(method).test_args("bert"))
    train(p, progress=False)
    p.model.eval()
    batch = dict(_padded_batch(tiny_bert))
    with torch.no_grad():
        want = p.model(**batch).logits
    out = tmp_path / "export"
    info = p.method.export(p.model, out, tokenizer=p.tokenizer)
    if p.method.capabilities.export == "model":  # a model folder: its config.json records the head; auto reads it
        assert json.loads((out / "config.json").read_text())["eft_head"] == head
        reloaded = load_model(str(out), 2, readout="auto").model
    else:  # an adapter or the trained tensors: applied to a base loaded with the run's head
        base = load_model(str(tiny_bert), 2, readout=head).model
        fresh = get_method(method).from_config(p.method.args_dict())
        reloaded = fresh.reload(base, out, resolve_targets(base, "qv"), Context(heads=head_modules(base)))
    with torch.no_grad():
        got = reloaded.eval()(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # plain transformers builds BERT's [CLS]-pooler head: right for the pooler heads, flagged for mean
    readme = (out / "README.md").read_text() if (out / "README.md").is_file() else ""
    assert ("computes **another function**" in readme) == (head == "mean")
    assert info.get("head") == ("mean" if head == "mean" else None)


@pytest.mark.parametrize("head", ["mean", "cls-pooler-trained"])
def test_the_feature_cache_serves_each_head_the_same_logits(head, tiny_bert):
    """The mean pools with the mask of the model's own call, which the cached forward makes as the plain one does."""
    from tests.test_features import TOP, _logits

    cfg = tiny_config(tiny_bert, targets=TOP, max_eval=24, head=head)
    plain, cached = prepare(cfg), prepare(cfg.replace(feature_cache=True))
    assert cached.features.k == 1
    torch.testing.assert_close(_logits(cached), _logits(plain), rtol=1e-5, atol=1e-6)


def test_a_quantized_base_keeps_a_trained_pooler_in_full_precision(tiny_bert):
    """The modules bitsandbytes skips are read from the architecture built with the run's head recorded."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from efficientft.models.large import head_names

    config = AutoConfig.from_pretrained(str(tiny_bert))
    for head, want in (("cls-pooler", ["classifier"]), ("cls-pooler-trained", ["classifier", "bert.pooler.dense"])):
        config.update({"eft_head": head})
        with torch.device("meta"):
            assert head_names(AutoModelForSequenceClassification.from_config(config)) == want


def test_auto_that_could_not_see_the_model_when_keyed_refuses_a_head_the_key_does_not_say(minilm_dir, monkeypatch):
    """A hub model not on this machine when the run was planned keeps ``auto`` in its key (keyed as the old head);
    if, once loaded, auto would read it through another head (a sentence-transformers encoder: mean), the run is
    refused in one line: one key never stands for two computations."""
    import efficientft.tasks.kinds as kinds

    monkeypatch.setattr(kinds, "resolve_head", lambda head, model: head)  # its files were not here when planned
    cfg = resolve(tiny_config(minilm_dir, steps=1))
    assert cfg.head == "auto"
    with pytest.raises(ConfigError, match=r"head auto chose 'mean' when the model loaded, but the run was planned "
                                          r"\(and keyed\) before its files were on this machine; give --head mean"):
        prepare(cfg)
