"""The package's version (core: provenance records it without importing the package facade)."""

__version__ = "0.1.0"
