"""Prompt templates as data: how an instruction (and optional input) becomes the text a causal LM continues.

The template is part of what a score means (the same model scores differently under another prompt), so each one
is a named, frozen value that enters a run's key by name:

- ``alpaca``: the Stanford Alpaca prompt that LLM-Adapters (and DoRA's commonsense / math scripts after it)
  train and evaluate with: "Below is an instruction that describes a task. ... ### Instruction: ... ### Response:".
  LLM-Adapters writes it as an indented triple-quoted f-string, so its literal prompt carries source indentation;
  we use the clean Alpaca text (one train/eval prompt, no accidental whitespace).
- ``metamath``: PEFT's ``method_comparison`` query template, ``Question: {query} Think step by step.\\nAnswer:``;
  the response follows "Answer:" directly.
- ``plain``: the instruction on one line, for synthetic tasks and tiny models.
- ``chat``: the model's own chat template (``tokenizer.apply_chat_template`` with the generation prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, unknown


@dataclass(frozen=True)
class Template:
    """One prompt format. ``with_input`` / ``without_input`` are ``str.format`` patterns over ``{instruction}``
    and ``{input}``; the prompt ends with ``response_prefix`` and the response is the text that follows it.
    ``chat`` templates are rendered by the tokenizer instead, and their text already holds the model's special
    tokens (BOS, turn markers): tokenise it with ``add_special_tokens`` False, or BOS comes twice."""

    name: str
    without_input: str
    with_input: str
    response_prefix: str
    description: str
    chat: bool = False

    @property
    def add_special_tokens(self) -> bool:
        """Whether the rendered prompt is tokenised with the tokenizer's special tokens (not for chat text)."""
        return not self.chat

    def render(self, instruction: str, input: str = "", tokenizer: Any = None) -> str:
        """The prompt for one example (the response is appended to it for training)."""
        if self.chat:
            return _chat_prompt(instruction, input, tokenizer)
        pattern = self.with_input if input else self.without_input
        return pattern.format(instruction=instruction, input=input)


_ALPACA_HEAD = "Below is an instruction that describes a task"
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "alpaca",
            without_input=f"{_ALPACA_HEAD}. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n",
            with_input=f"{_ALPACA_HEAD}, paired with an input that provides further context. Write a response "
            "that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
            "\n\n### Response:\n",
            response_prefix="### Response:\n",
            description="Alpaca / LLM-Adapters instruction prompt",
        ),
        Template(
            "metamath",
            without_input="Question: {instruction} Think step by step.\nAnswer:",
            with_input="Question: {instruction}\n{input} Think step by step.\nAnswer:",
            response_prefix="Answer:",
            description="PEFT method_comparison (MetaMathQA) query template",
        ),
        Template(
            "plain",
            without_input="{instruction}\n",
            with_input="{instruction}\n{input}\n",
            response_prefix="",
            description="the instruction (and input) on its own line(s)",
        ),
        Template(
            "chat",
            without_input="",
            with_input="",
            response_prefix="",
            description="the tokenizer's own chat template (user turn + generation prompt)",
            chat=True,
        ),
    )
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(TEMPLATES)


def get_template(name: str) -> Template:
    """The template called ``name``; an unknown name is a ConfigError with a did-you-mean."""
    if name not in TEMPLATES:
        raise unknown("prompt template", name, TEMPLATES)
    return TEMPLATES[name]


def render_prompt(name: str, instruction: str, input: str = "", tokenizer: Any = None) -> str:
    """The prompt of template ``name`` for one instruction (and optional input)."""
    return get_template(name).render(instruction, input, tokenizer)


def _chat_prompt(instruction: str, input: str, tokenizer: Any) -> str:
    """One user turn rendered by the tokenizer's chat template, ending with the assistant's generation prompt."""
    if tokenizer is None:
        raise ConfigError("prompt template 'chat' renders with the model's tokenizer, and none was given.")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"prompt template 'chat' needs a tokenizer with a chat template; {name!r} has none. "
                          f"Use one of: {', '.join(n for n in TEMPLATE_NAMES if n != 'chat')}.")
    content = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


__all__ = ["TEMPLATES", "TEMPLATE_NAMES", "Template", "get_template", "render_prompt"]
