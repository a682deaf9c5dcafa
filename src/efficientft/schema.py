"""One rule per run setting: its type, the range that runs, and its one canonical spelling.

Every :class:`~efficientft.config.RunConfig` field is checked by the same function against its :class:`Rule`,
so a value that passes validation also runs: seeds fit what torch and numpy accept (0 .. 2**32 - 1), counts fit
in 32 bits (tokenizers and samplers take C integers), no float option is nan or inf, and names are text. Choices
are case-folded (``FP32`` ≡ ``fp32``) so that equal experiments share a run key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError, did_you_mean

SEED_MAX = 2**32 - 1  # torch.manual_seed and numpy's RandomState take 0 .. 2**32 - 1
COUNT_MAX = 2**31 - 1  # lengths, batch sizes and step counts reach C code as 32-bit integers
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass(frozen=True)
class Rule:
    """The accepted values of one setting. Bounds are inclusive unless ``*_open``; ``kind`` is one of float,
    int, bool, text, choice, mapping."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    hint: str = ""  # for a mapping: what it maps, with an example; for names: what they name
    zero_is_none: bool = False  # 0 spells "off" (None), wherever the value is written: flag, run file or suite

    def accepted(self) -> str:
        """What the rule accepts, in words (the tail of every error message it gives)."""
        if self.kind in ("float", "int"):
            noun = "a number" if self.kind == "float" else "an integer"
            if self.low == 0 and self.low_open and self.high is None:
                return "a positive number" + (" (0: none)" if self.zero_is_none else "")
            if self.kind == "int" and self.low == 1 and self.high == COUNT_MAX:
                return f"a positive integer (at most {COUNT_MAX})"
            if self.low is not None and self.high is not None:
                lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
                return f"{'an integer ' if self.kind == 'int' else ''}in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
            if self.low is not None:
                return f"{noun} {'>' if self.low_open else '>='} {_num(self.low)}"
            return f"a finite {'number' if self.kind == 'float' else 'integer'}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "text":
            return "text (a name)"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "names":
            return f"a list of names{' (' + self.hint + ')' if self.hint else ''}, or one comma-separated text"
        return f"a mapping{' of ' + self.hint if self.hint else ''}"

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted to the field's type and canonical form and inside its range; a
        :class:`ConfigError` names what is accepted."""
        v = self.convert(name, value)
        if v is not None and self.kind in ("float", "int") and (not math.isfinite(v) or not self._in_range(v)):
            raise ConfigError(f"{name} must be {self.accepted()}, got {value!r}.", field=name)
        return v

    def convert(self, name: str, value: Any) -> Any:
        """``value`` converted to the field's type and canonical form, its range not yet checked (a suite
        converts each value where it is written, and checks ranges on the runs it expands to).

        Strings from the command line or YAML (``"1e-3"``, ``"4"``) convert; ``True`` is not a number.
        """
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{name} must be {self.accepted()}, got None.", field=name)
        v = getattr(self, f"_{self.kind}")(name, value)
        return None if self.zero_is_none and v == 0 else v

    # ------------------------------------------------------------------ one converter per kind
    def _float(self, name: str, value: Any) -> float:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError
            v = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be a number, got {value!r}.", field=name) from None
        return v

    def _int(self, name: str, value: Any) -> int:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError
            if isinstance(value, int):
                v = value
            else:
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                v = int(f)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be an integer, got {value!r}.", field=name) from None
        return v

    def _bool(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}.", field=name)

    def _text(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be text (a name), got {value!r} ({type(value).__name__}).", field=name)
        if not value.strip():
            raise ConfigError(f"{name} is empty; it must be text (a name).", field=name)
        return value.strip()

    def _choice(self, name: str, value: Any) -> str:
        v = value.strip().lower() if isinstance(value, str) else value
        if v not in self.choices:
            raise ConfigError(f"{name} {value!r} is not known.{did_you_mean(str(v), self.choices)} "
                              f"Accepted: {', '.join(self.choices)}.", field=name)
        return v

    def _names(self, name: str, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise ConfigError(f"{name} must be {self.accepted()}, got {value!r}.", field=name)
        out = [x.strip().lower() for x in items if x.strip()]
        if self.choices:
            for x in out:
                self._choice(name, x)
        return out

    def _mapping(self, name: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be {self.accepted()}; got {value!r}.", field=name)
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{name} has a key that is not text: {bad[0]!r}; keys are names.", field=name)
        return dict(value)

    def _in_range(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def positive(kind: str = "float", optional: bool = False) -> Rule:
    """A positive number, or a positive integer that fits in 32 bits."""
    if kind == "int":
        return Rule("int", 1, COUNT_MAX, optional=optional)
    return Rule("float", 0, None, low_open=True, optional=optional)


# ---------------------------------------------------------------------------------------------- one declaration
KeyPolicy = Literal["always", "when_set", "never"]
AUTO_FLAG = "auto"  # the flag is --<name with dashes>


@dataclass(frozen=True)
class Setting:
    """Everything about one run setting, written once as the metadata of its :class:`RunConfig` field.

    The config's validation, the run key, ``eft run``'s flags, ``eft sweep``'s flags and the suite validator are
    all derived from these, so a setting cannot mean one thing on the command line and another in a suite.
    ``key``: ``always`` (changes the result), ``when_set`` (added after runs were stored: in the key only when it
    differs from its default, so that earlier runs keep their keys; ``keyed_as_default``: resolved values that
    compute what the default computed before, also left out) or ``never`` (where things live, how they are
    shown). ``flag``: the ``eft run`` flag (``AUTO_FLAG``: ``--<name>``; None: no flag of its own, or a hand-written
    one in cli.py). ``in_suite``: a suite may set it; ``sweep_flag``: ``eft sweep`` has the same flag (for the
    environment settings a suite leaves to the command line). ``cli_only``: the setting may come only from the
    command line, never from a file (a run config or a suite). ``nested_axes``: a mapping whose values may each be a
    suite axis (``method_args: {rank: [8, 16]}``). ``content``: a local file or folder the value names enters the
    key by its content (:func:`efficientft.content.identity`), not by its path.
    """

    rule: Rule
    help: str = ""
    key: KeyPolicy = "always"
    group: str = ""
    flag: str | None = AUTO_FLAG
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    in_suite: bool = True
    sweep_flag: bool = False
    cli_only: bool = False
    nested_axes: bool = False
    content: bool = False
    keyed_as_default: tuple[Any, ...] = ()

    def flag_name(self, name: str) -> str | None:
        return f"--{name.replace('_', '-')}" if self.flag == AUTO_FLAG else self.flag


def setting(default: Any = None, rule: Rule | None = None, *, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with its :class:`Setting`: ``lr: float = setting(5e-4, positive(), help=...)``."""
    info = Setting(rule=rule or Rule("text"), **meta)
    if factory is not None:
        return field(default_factory=factory, metadata={"setting": info})
    return field(default=default, metadata={"setting": info})
