"""Method arguments, declared with the same rules as run settings.

Each field of a method's ``Args`` dataclass names its :class:`~efficientft.schema.Rule` (type, range, canonical
form) through :func:`arg`; :class:`MethodArgs` converts and checks every field by its rule on construction, so a
value from the command line (``"8"``), a run file or a suite is the same value, and a bad one is one line naming
the field and what it accepts. :meth:`MethodArgs.check` is left for constraints across fields (AdaLoRA's
``init_r >= rank``) or beyond one rule (HRA's even rank). :meth:`Method.from_config` prefixes the method's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..schema import Rule

POSITIVE_INT = Rule("int", 1, None)
NON_NEGATIVE_INT = Rule("int", 0, None)
POSITIVE = Rule("float", 0, None, low_open=True)
NON_NEGATIVE = Rule("float", 0, None)
FRACTION = Rule("float", 0, 1, high_open=True)  # dropout rates: [0, 1)
OPEN_FRACTION = Rule("float", 0, 1, low_open=True, high_open=True)
BOOL = Rule("bool")
OPTIONAL_POSITIVE = Rule("float", 0, None, low_open=True, optional=True)


def choice(*choices: str) -> Rule:
    """One of ``choices`` (lower-case names; case-folded like a run setting's)."""
    return Rule("choice", choices=tuple(choices))


@dataclass(frozen=True)
class Arg:
    """One method argument's rule, its help, and a note added to what its error says is accepted."""

    rule: Rule
    help: str = ""
    note: str = ""

    def accepted(self) -> str:
        r = self.rule
        if r.kind == "choice":
            text = f"one of {', '.join(r.choices)}"
        elif r.kind == "int" and r.high is None and r.low in (0, 1) and not r.low_open:
            text = "a positive integer" if r.low == 1 else "a non-negative integer"
        else:
            text = r.accepted()
        return f"{text} ({self.note})" if self.note else text

    def check(self, name: str, value: Any) -> Any:
        """``value`` converted by the rule and inside its range; a ValueError naming what is accepted."""
        try:
            v = self.rule.convert(name, value)
        except ConfigError as e:
            if self.rule.kind != "choice":
                raise ValueError(str(e)) from None
            raise ValueError(f"{name} must be {self.accepted()}, got {value!r}.") from None
        try:
            return self.rule.check(name, v)
        except ConfigError:
            raise ValueError(f"{name} must be {self.accepted()}, got {v!r}.") from None


def arg(default: Any, rule: Rule, *, help: str = "", note: str = "") -> Any:  # noqa: A002 - as setting()'s
    """A method argument with its rule: ``rank: int = arg(8, POSITIVE_INT)``."""
    return field(default=default, metadata={"arg": Arg(rule, help, note)})


def arg_of(f: dataclasses.Field) -> Arg | None:
    return f.metadata.get("arg")


@dataclass
class MethodArgs:
    """Base of the ``Args`` dataclasses: every field is converted and checked by its :func:`arg` rule."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            a = arg_of(f)
            if a is not None:
                setattr(self, f.name, a.check(f.name, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Constraints across fields, after each field passed its rule (raise ValueError)."""
