"""Backbones (hub id or local folder) and the role map of their projections."""

from .loading import Loaded, bundled_minilm, describe, fingerprint, load_model, resolve_model
from .roles import (
    ALL,
    PRESETS,
    ROLES,
    Family,
    Target,
    canonical_targets,
    family_of,
    head_modules,
    linear_modules,
    parse_roles,
    resolve_targets,
    role_targets,
)

__all__ = [
    "ALL", "PRESETS", "ROLES", "Family", "Target", "Loaded", "bundled_minilm", "canonical_targets", "describe", "family_of",
    "fingerprint", "head_modules", "linear_modules", "load_model", "parse_roles", "resolve_model", "resolve_targets",
    "role_targets",
]
