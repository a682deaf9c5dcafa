"""The method registry itself, alone in its module so that the capability checks can list the registered methods
without importing the package that imports them (no import cycle)."""

from __future__ import annotations

from ..registry import Registry

METHODS: Registry[type] = Registry("method")
