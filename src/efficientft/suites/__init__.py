"""The suites shipped with EfficientFT, as package data: addressed by name (``eft sweep quick``) from any directory.

They live inside the package (not in a ``configs/`` folder of the checkout) so that a wheel install has them too.
A reference is a path when that file exists; otherwise the name of a shipped file. :class:`Shipped` is generic so
that other shipped YAML (task files) can be addressed the same way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError, unknown

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Shipped:
    """YAML files of one kind shipped in one package folder, each addressed by its file stem."""

    kind: str
    folder: Path

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.iterdir() if p.suffix in SUFFIXES and p.is_file())

    def path(self, name: str) -> Path:
        """The shipped file called ``name``; an unknown name is a :class:`ConfigError` with "did you mean"."""
        for suffix in SUFFIXES:
            p = self.folder / f"{name}{suffix}"
            if p.is_file():
                return p
        raise unknown(self.kind, name, self.names())

    def resolve(self, ref: str | Path) -> Path:
        """An existing file as given, else the shipped file of that name.

        A bare shipped name that is also an entry of the working directory is ambiguous, so the choice is said on
        stderr: a file there is the user's own and wins; a folder cannot be a suite, so the shipped file is taken.

        A reference that looks like a path (a folder in it, or a ``.yaml`` suffix) but is not a file is an error
        that names the shipped file of the same stem, so ``configs/quick.yaml`` from older instructions says to
        use ``quick``.
        """
        p = Path(ref)
        known = self.names()
        bare = str(ref) in known and len(p.parts) == 1  # a shipped name that is also an entry of this folder
        if p.is_file():
            if bare:
                print(f"{self.kind} {str(ref)!r}: using the file ./{p} here, not the shipped {self.kind} of that name "
                      f"(rename the file to use the shipped one).", file=sys.stderr)
            return p
        if p.is_dir() and bare:  # a folder is no suite: the name can only mean the shipped one
            shipped = self.path(str(ref))
            print(f"{self.kind} {str(ref)!r}: ./{p} here is a folder, not a {self.kind} file; using the shipped "
                  f"{self.kind} {shipped}.", file=sys.stderr)
            return shipped
        if p.is_dir():
            raise ConfigError(f"{str(p)!r} is a folder, not a {self.kind} file; pass a .yaml file or the name of a "
                              f"shipped {self.kind}: {', '.join(known)}.")
        if len(p.parts) > 1 or p.suffix in SUFFIXES:
            hint = (f" EfficientFT ships a {self.kind} called {p.stem!r}: pass its name." if p.stem in known else "")
            raise ConfigError(f"{self.kind} file {str(p)!r} does not exist.{hint} Shipped {self.kind}s "
                              f"(by name): {', '.join(known)}.")
        return self.path(str(ref))

    def description(self, name: str) -> str:
        """The file's ``description:`` (one line), or its first comment line when it has none."""
        text = self.path(name).read_text(encoding="utf-8")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError:
            raw = None
        if isinstance(raw, dict) and raw.get("description"):
            return " ".join(str(raw["description"]).split())
        comments = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
        return comments[0] if comments else ""


SUITES = Shipped("suite", Path(__file__).resolve().parent)


def resolve_suite(ref: str | Path) -> Path:
    """The suite file for a path or a shipped suite's name (see :meth:`Shipped.resolve`)."""
    return SUITES.resolve(ref)
