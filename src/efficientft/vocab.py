"""The vocabulary of a run: the names a config may use, and their one spelling (core; pure string logic).

Role names and target presets, tracker names, the spellings of task names, the bundled model's names and the
training-data sources: :class:`~efficientft.config.RunConfig` checks its fields against them without importing
the models, tasks or trackers that act on them (those import their names from here).
"""

from __future__ import annotations

import re

from .errors import ConfigError, did_you_mean

# ------------------------------------------------------------------ roles and targets (models.roles acts on them)
ROLES = ("q", "k", "v", "o", "ffn_up", "ffn_gate", "ffn_down")
ATTENTION_ROLES = ("q", "k", "v", "o")
PRESETS: dict[str, tuple[str, ...]] = {
    "qv": ("q", "v"),
    "qk": ("q", "k"),
    "kv": ("k", "v"),
    "qkv": ("q", "k", "v"),
    "qkvo": ("q", "k", "v", "o"),
    "ffn": ("ffn_up", "ffn_gate", "ffn_down"),
    "all-linear": ROLES,
}
ALL = "all"  # every parameter of the model (full fine-tuning only)


def parse_roles(spec: str) -> tuple[str, ...] | None:
    """Roles named by ``spec`` (a preset, letters such as ``qkv``, or a comma list of roles); None for patterns."""
    spec = spec.strip().lower()
    if spec in PRESETS:
        return PRESETS[spec]
    if spec and "," not in spec and set(spec) <= set("qkvo") and len(set(spec)) == len(spec):
        return tuple(r for r in "qkvo" if r in spec)
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if items and all(i in ROLES or i in PRESETS for i in items):
        out: list[str] = []
        for i in items:
            for r in PRESETS.get(i, (i,)):
                if r not in out:
                    out.append(r)
        return tuple(out)
    return None


def canonical_targets(spec: str) -> str:
    """The one spelling of a targets value, so that equal experiments share a run key.

    Role lists in any order or format (``v,q``, ``q,v``, ``QV``) become role letters in q, k, v, o order (``qv``)
    when they name attention roles only, a preset's name when they name its roles (``ffn``, ``all-linear``), else
    a comma list in role order. Patterns keep their spelling (a module name is case-sensitive) without the blanks
    around commas; no pattern at all, or an invalid ``re:`` expression, is an error here, before a model loads.
    """
    spec = spec.strip()
    if spec.lower() == ALL:
        return ALL
    roles = parse_roles(spec)
    if roles is not None:
        if set(roles) <= set(ATTENTION_ROLES):
            return "".join(r for r in ATTENTION_ROLES if r in roles)
        for name in ("ffn", "all-linear"):
            if set(roles) == set(PRESETS[name]):
                return name
        return ",".join(r for r in ROLES if r in roles)
    patterns = [s.strip() for s in spec.split(",") if s.strip()]
    if not patterns:
        raise ConfigError(f"targets {spec!r} is empty; give roles (qv, qkv, qkvo, all-linear) or module-name "
                          f"patterns.")
    for pat in patterns:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as e:
                raise ConfigError(f"target {pat!r} is not a valid regular expression ({e}); write re:<python "
                                  f"regex>, e.g. re:.*\\.(query|value).") from None
    return ",".join(patterns)


# ------------------------------------------------------------------ classifier heads (models.heads builds them)
# How a classifier reads the encoder; models.heads declares which fit each architecture and auto's choice.
HEADS = ("auto", "cls-pooler", "cls-pooler-trained", "mean", "model")
# The heads that compute what every run computed before the setting existed (the architecture's transformers head,
# its pooler frozen): the run key leaves them out, as it leaves out auto, so those runs keep their keys.
HEADS_KEYED_AS_BEFORE = ("cls-pooler", "model")


# ------------------------------------------------------------------ trackers (the trackers module drives them)
# tracker name -> the module it needs (and the extra that installs it)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_tracker_names(names: list[str]) -> list[str]:
    """The tracker names (each entry may hold several, comma-separated), stripped and without repeats; an unknown
    one is a ConfigError naming the accepted."""
    out: list[str] = []
    for raw in (part for entry in names for part in entry.split(",") if part.strip()):
        name = raw.strip().lower()
        if name not in TRACKERS:
            raise ConfigError(f"tracker {raw!r} is not known.{did_you_mean(name, list(TRACKERS))} Accepted: "
                              f"{', '.join(TRACKERS)} (several allowed, comma-separated).")
        if name not in out:
            out.append(name)
    return out


# ------------------------------------------------------------------ metric direction (every choice reads it)
# Scores where a smaller value is better, named without their split (``dev/lm_loss`` is ``lm_loss``): the LM loss,
# its value before training and the forgetting score (``forgetting/increase``), the training loss. Every other
# metric (accuracy, F1, MCC, correlations, exact match) is better larger. Selection, halving, the best-dev point,
# the report's learning-rate choice, bold marks and ranks all ask :func:`higher_is_better`.
LOWER_IS_BETTER = frozenset({"lm_loss", "lm_loss_before", "increase", "loss"})


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (``lm_loss`` or with its split, ``dev/lm_loss``) is better."""
    return str(metric).rsplit("/", 1)[-1] not in LOWER_IS_BETTER


# ------------------------------------------------------------------ names a reader takes before a local path
# Common spellings of the GLUE names (the tasks registry reads them).
TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}
# The bundled model's names (models.loading): a folder of one of these names is not read as the model.
MODEL_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
# The --train-data sources of generation suites (tasks.instruct.TRAIN_FILES holds their files).
TRAIN_SOURCES = ("boolq", "arc_e", "arc_c", "obqa")
# The user's data is labelled ``<name>@<hash8>`` by resolution (efficientft.resolve.resolve_custom).
DATA_LABEL_HASH = re.compile(r"@[0-9a-f]{8}$")
