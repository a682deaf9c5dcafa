"""Prompt templates: the exact published strings, the chat template through the tokenizer, clear errors."""

from __future__ import annotations

import copy

import pytest

from efficientft.errors import ConfigError
from efficientft.tasks.templates import TEMPLATE_NAMES, get_template, render_prompt


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


def test_alpaca_strings_are_the_published_ones():
    assert render_prompt("alpaca", "Add 2 and 3.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n")
    assert render_prompt("alpaca", "Add them.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd them.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n")
    assert get_template("alpaca").response_prefix == "### Response:\n"


def test_metamath_is_peft_method_comparison_query_template():
    assert render_prompt("metamath", "What is 2+3?") == "Question: What is 2+3? Think step by step.\nAnswer:"
    assert render_prompt("metamath", "x").endswith(get_template("metamath").response_prefix)


def test_plain_and_braces_in_the_text_are_kept_verbatim():
    assert render_prompt("plain", "reverse: red cat") == "reverse: red cat\n"
    assert render_prompt("plain", "f({x}) = {y}", "{input}") == "f({x}) = {y}\n{input}\n"


def test_every_prompt_ends_with_its_response_prefix():
    for name in TEMPLATE_NAMES:
        t = get_template(name)
        if not t.chat:
            assert t.render("do it").endswith(t.response_prefix)
            assert t.render("do it", "with this").endswith(t.response_prefix)


def test_chat_uses_the_tokenizers_template(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert render_prompt("chat", "Add them.", "2 and 3", tokenizer=tok) == (
        "<|user|>Add them.\n\n2 and 3\n<|assistant|>")
    assert get_template("chat").add_special_tokens is False and get_template("alpaca").add_special_tokens


def test_chat_without_a_chat_template_is_a_config_error(tokenizer):
    assert not getattr(tokenizer, "chat_template", None)
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat template; .* has none. Use one of: "
                                          "alpaca, metamath, plain."):
        render_prompt("chat", "hi", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="renders with the model's tokenizer, and none was given"):
        render_prompt("chat", "hi")


def test_unknown_template_has_did_you_mean():
    with pytest.raises(ConfigError) as e:
        get_template("alpacca")
    assert str(e.value) == ("unknown prompt template 'alpacca'. Did you mean 'alpaca'? Known prompt templates: "
                            "alpaca, chat, metamath, plain.")
    with pytest.raises(ConfigError, match="Did you mean 'metamath'"):
        render_prompt("metamth", "x")


def test_templates_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        get_template("plain").without_input = "x"  # type: ignore[misc]
