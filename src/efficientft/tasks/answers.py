"""Answer extraction: how a generated text becomes the answer that is compared with the gold label.

A generative score is only comparable with a published one when the answer is read out of the text by the same
rule, so each published protocol is one small named function here, written from the protocol's description and
the reference evaluation scripts (not copied):

- ``gsm8k``: PEFT's ``method_comparison`` (MetaMathQA → GSM8K) reads the text after the last ``####`` or
  "The answer is" marker; we fall back to the last number in the text when there is no marker (as LLM-Adapters
  does for every math set), drop thousands separators, and compare numerically within 1e-4 (PEFT tests float
  equality; GSM8K's golds are integers, so the two agree but for values within 1e-4 of the gold).
- ``number``: LLM-Adapters' math sets (GSM8K, SVAMP, MAWPS, AddSub, MultiArith, SingleEq): the last number in the
  text, commas removed, compared with ``float(answer)`` within 0.001 (their ``miss = 0.001``).
- ``letter``: LLM-Adapters' AQuA / MathQA: the first capital ``A``–``E`` anywhere in the stripped text. The rule
  is crude (the "A" of "A train ..." counts) but it is the one their published numbers use.
- ``commonsense`` and ``commonsense-<task>``: LLM-Adapters' commonsense sets: the first occurrence of one of the
  task's answer words (``true|false``, ``solution1|2``, ``answer1–5``, ``ending1–4``, ``option1|2``), matched
  case-sensitively as substrings, exactly as their regular expressions match.
- ``choice``: the user's option labels (``--answer choice``): the first word after the last "The answer is"
  marker, else the first word of the text.
- ``text``: normalised exact match (strip, collapse whitespace).

A filter returns ``None`` when the text holds no answer at all; :func:`is_correct` counts that as wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ..errors import unknown

Filter = Callable[[str], "str | None"]

# LLM-Adapters' number pattern (an optional minus, digits, an optional decimal part), applied after commas are
# removed; a fraction "a/b" is read only after an explicit answer marker, as PEFT's parser converts it.
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_NUMBER_OR_FRACTION = re.compile(r"-?\d+(?:\.\d+)?(?:\s*/\s*-?\d+(?:\.\d+)?)?")
# PEFT's answer markers (MetaMath's "The answer is:", "The final answer is", GSM8K's "####"), read here as any
# "answer is" (also "the correct answer is", LLM-Adapters' target wording), case-insensitive.
_MARKERS = re.compile(r"####|\banswer is:?", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")  # a run of letters and digits: a choice label such as B, yes, answer2

# Tolerances of the numeric comparisons: LLM-Adapters accepts |pred - gold| <= 0.001; for GSM8K (integer golds)
# a tighter 1e-4 keeps "18.0001" wrong while "18.0" and "18" stay right.
NUMBER_TOLERANCE = 1e-3
GSM8K_TOLERANCE = 1e-4

# LLM-Adapters' answer words per commonsense task (commonsense_evaluate.py, extract_answer).
COMMONSENSE_WORDS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "siqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "arc": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "obqa": ("answer1", "answer2", "answer3", "answer4", "answer5"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
}


def _clean_number(s: str) -> str:
    """A matched number in a canonical spelling: no spaces, no trailing decimal point."""
    return re.sub(r"\s+", "", s).rstrip(".")


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return _clean_number(found[-1]) if found else None


def gsm8k(text: str) -> str | None:
    """The GSM8K answer: the first number after the last ``####`` / "The answer is" marker, else the last number.

    A marker with no number after it falls back to the last number of the whole text (a model that writes
    "The answer is" and stops still gets its last computed value read, as the last-number rule would).
    """
    text = text.replace(",", "")
    marks = list(_MARKERS.finditer(text))
    if marks:
        tail = text[marks[-1].end():].split("\n", 1)[0]
        found = _NUMBER_OR_FRACTION.search(tail)
        if found:
            return _clean_number(found.group(0))
    return _last_number(text)


def number(text: str) -> str | None:
    """LLM-Adapters' math rule: the last number in the text, commas removed."""
    return _last_number(text)


def letter(text: str) -> str | None:
    """LLM-Adapters' AQuA rule: the first capital A–E in the stripped text (None when there is none)."""
    found = re.search(r"[A-E]", text.strip())
    return found.group(0) if found else None


def word_filter(words: Sequence[str]) -> Filter:
    """A filter returning the first occurrence of any of ``words`` (substring match, case-sensitive).

    This is LLM-Adapters' commonsense rule generalised: their per-task regular expressions ``w1|w2|...`` return
    the leftmost match. Longer words are tried first at a position so that ``answer10`` is not read as
    ``answer1`` when both are labels.
    """
    if not words:
        raise ValueError("word_filter needs at least one answer word")
    pattern = re.compile("|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)))

    def extract_word(text: str) -> str | None:
        found = pattern.search(text.strip())
        return found.group(0) if found else None

    extract_word.__doc__ = f"The first of {', '.join(words)} in the text."
    return extract_word


def choice(text: str) -> str | None:
    """A choice label in the user's data: the first word after the last "The answer is" marker, else the first
    word of the text (``"B) because ..."`` → ``B``; ``"the correct answer is answer2"`` → ``answer2``)."""
    marks = list(_MARKERS.finditer(text))
    found = _WORD.search(text[marks[-1].end():] if marks else text)
    if found is None and marks:
        found = _WORD.search(text)
    return found.group(0) if found else None


def normalised_text(text: str) -> str | None:
    """Normalised text: stripped, inner whitespace collapsed to one space; None when nothing is left."""
    out = " ".join(text.split())
    return out or None


FILTERS: dict[str, Filter] = {
    "gsm8k": gsm8k,
    "number": number,
    "letter": letter,
    "choice": choice,
    "commonsense": word_filter(sorted({w for ws in COMMONSENSE_WORDS.values() for w in ws})),
    "text": normalised_text,
    **{f"commonsense-{task}": word_filter(ws) for task, ws in COMMONSENSE_WORDS.items()},
}

_NUMERIC = {"gsm8k": GSM8K_TOLERANCE, "number": NUMBER_TOLERANCE}


def get_filter(name: str) -> Filter:
    """The filter called ``name``; an unknown name is a ConfigError listing the known filters."""
    if name not in FILTERS:
        raise unknown("answer filter", name, FILTERS)
    return FILTERS[name]


def extract(name: str, generated: str) -> str | None:
    """The answer that filter ``name`` reads from a generated text (None: no answer in it)."""
    return get_filter(name)(generated)


def to_number(s: str) -> float | None:
    """A number spelled as ``1234``, ``1,234``, ``-3``, ``5.00``, ``.5``, ``$5``, ``50%``, ``5.`` or ``3/4``;
    None otherwise. Only a trailing dot (the end of a sentence) is dropped: a leading one is the decimal point."""
    s = s.strip().replace(",", "").lstrip(" $").rstrip(" %.")
    if "/" in s:
        num, _, den = s.partition("/")
        a, b = to_number(num), to_number(den)
        return None if a is None or b is None or b == 0 else a / b
    try:
        x = float(s)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def is_correct(name: str, predicted: str | None, gold: str) -> bool:
    """Whether an extracted answer matches the gold one under filter ``name``'s comparison.

    Numeric filters compare numbers within the protocol's tolerance (a gold that is not a number is compared as
    text); the others compare the normalised strings.
    """
    get_filter(name)
    if predicted is None:
        return False
    if name in _NUMERIC:
        p, g = to_number(predicted), to_number(gold)
        if p is not None and g is not None:
            return abs(p - g) < _NUMERIC[name] if name == "gsm8k" else abs(p - g) <= _NUMERIC[name]
    return " ".join(predicted.split()) == " ".join(str(gold).split())


__all__ = ["COMMONSENSE_WORDS", "FILTERS", "Filter", "extract", "get_filter", "is_correct", "to_number",
           "word_filter"]
