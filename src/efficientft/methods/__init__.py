"""Fine-tuning methods: one file each, registered by name in :data:`METHODS`.

Importing this package imports every method file, so each registers itself (one line per method).
"""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import METHODS


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "capabilities") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def register(name: str):
    """Class decorator: the one registration line of a method file (sets ``cls.name``).

    The class must declare ``capabilities = Capabilities(...)`` in its own body: a declaration inherited from a
    parent would let a variant that, say, rewrites the base weights claim its parent's quantized-base support.
    """

    def deco(cls):
        from .capabilities import Capabilities

        if not isinstance(cls.__dict__.get("capabilities"), Capabilities):
            raise TypeError(f"method {name!r} ({cls.__qualname__}) must declare capabilities = Capabilities(...) in "
                            "its own class body; it is not inherited.")
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return deco


def get_method(name: str):
    """The method class registered as ``name`` (an error with "did you mean" otherwise)."""
    return METHODS.get(name)


_import_all()
