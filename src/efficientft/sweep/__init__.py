"""Suites, sweeps and model selection: expand a suite into runs and execute them in-process, on a local pool of
worker processes, or on a Ray cluster — never redoing a run the store has ``done``."""

from .suite import PlannedRun, Suite, load_suite

__all__ = ["PlannedRun", "Suite", "load_suite"]
