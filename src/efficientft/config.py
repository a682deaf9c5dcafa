"""The configuration of one run: a typed dataclass, checked on construction, YAML in and out (core: it needs no
torch; :mod:`efficientft.resolve` joins it with its method, task, data and hardware).

Every field that changes a result is part of the run's identity (:meth:`RunConfig.identity`, hashed into the run
key by :func:`efficientft.resolve.run_key`); fields that only say where things live or how to show progress
(``ENVIRONMENT_FIELDS``) are not, so the same experiment has the same key on every machine. Each field carries
its whole :class:`~efficientft.schema.Setting` (rule, help, key policy, flag); the tables below the class and the
command line (:mod:`efficientft.cli_flags`) are derived from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .content import identity as content_identity
from .errors import ConfigError, did_you_mean
from .hardware import best_precision, cpu_flags  # noqa: F401 - the hardware probe's old home
from .schema import COUNT_MAX, SEED_MAX, Rule, Setting, positive, setting
from .vocab import (
    HEADS,
    HEADS_KEYED_AS_BEFORE,
    MODEL_ALIASES,
    ROLES,
    TRAIN_SOURCES,
    canonical_targets,
    check_tracker_names,
)
from .yaml_limits import read_yaml

DEFAULT_MODEL = "minilm"
DEFAULT_TASK = "sst2"
DEFAULT_TARGETS = "qv"
CUSTOM_TASK = "custom"  # the task name of the user's data when it is given none
DEFAULT_EPOCHS = 3.0
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: bf16 where the hardware computes it natively, else fp32
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCES = ("local", "hub")
QUANTIZE = ("4bit", "8bit")  # bitsandbytes NF4 / LLM.int8 base weights
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")

TRAIN, OPTIM, DATA, MEMORY, ENV = ("what to train", "optimisation", "data and evaluation", "memory and checkpoints",
                                   "environment and output")
_COUNT = positive("int")
_OPT_COUNT = positive("int", optional=True)
_SEED = Rule("int", 0, SEED_MAX)
_BOOL = Rule("bool")


@dataclass
class RunConfig:
    """Everything that defines one fine-tuning run.

    ``lr_ratio`` is λ of arXiv 2410.02247: the learning rate of W_v's trainable parameters is ``lr_ratio * lr``
    while W_q/W_k keep ``lr``. ``role_lr`` generalises it to any role (``{"v": 4, "o": 2}``); when both are
    given they must agree on ``v``.

    Each field is declared once, with its :class:`~efficientft.schema.Setting` (type and range, help, key policy,
    flag, group). To add a setting, add one field here: ``name: T = setting(default, Rule(...), help=...,
    group=..., key=...)``. Its validation, its ``eft run --name`` flag, its place in suites and in (or out of) the
    run key all follow from that line. A setting added after runs were stored takes ``key="when_set"`` with a
    default that computes what runs computed before, so that no stored run changes its key.
    """

    # what is trained
    task: str | None = setting(None, Rule("text"), group=TRAIN,  # DEFAULT_TASK, or CUSTOM_TASK for the user's data
                               help="GLUE task (rte, sst2, ...; see `eft tasks`) or a name for --train-file data")
    method: str = setting("lora", Rule("text"), group=TRAIN, help="fine-tuning method (see `eft methods`)")
    model: str = setting(DEFAULT_MODEL, Rule("text"), group=TRAIN, sweep_flag=True,  # eft sweep --model: an override
                         content=True,  # a local folder: its config and weights; a hub id or minilm: the name
                         help="hub id or local model folder (default: the bundled all-MiniLM-L6-v2)")
    targets: str = setting(DEFAULT_TARGETS, Rule("text"), group=TRAIN,
                           help="roles (qv, qkv, qkvo, all-linear, q,v,ffn_up) or module-name patterns")
    lr_ratio: float = setting(1.0, positive(), group=TRAIN, help="λ: W_v's trainable parameters learn at λ × --lr")
    role_lr: dict[str, float] = setting(rule=Rule("mapping", hint="role to ratio, e.g. {v: 4}"), factory=dict,
                                        flag=None, nested_axes=True)  # cli.py: --role-lr v=4,o=2
    method_args: dict[str, Any] = setting(rule=Rule("mapping", hint="argument to value, e.g. {rank: 8}"),
                                          factory=dict, flag=None,
                                          nested_axes=True)  # cli.py: --rank/--alpha/--dropout/--method-arg
    # optimisation
    lr: float = setting(5e-4, positive(), group=OPTIM, help="base learning rate")
    weight_decay: float = setting(0.0, Rule("float", 0), group=OPTIM, help="AdamW weight decay")
    schedule: str = setting("linear", Rule("choice", choices=SCHEDULES), group=OPTIM,
                           help="learning-rate decay after the warm-up")
    warmup_ratio: float = setting(0.06, Rule("float", 0, 1, high_open=True), group=OPTIM,
                                  help="fraction of the steps that warm the learning rate up")
    epochs: float | None = setting(None, positive(optional=True), group=OPTIM,
                                   help=f"passes over the training data (default: {DEFAULT_EPOCHS:g})")
    steps: int | None = setting(None, _OPT_COUNT, group=OPTIM, help="optimizer steps (instead of --epochs)")
    batch_size: int = setting(16, _COUNT, group=OPTIM,
                              help="examples per micro-batch (the global batch when data-parallel)")
    grad_accum: int = setting(1, _COUNT, group=OPTIM, help="micro-batches per optimizer step")
    max_grad_norm: float | None = setting(1.0, Rule("float", 0, None, low_open=True, optional=True, zero_is_none=True),
                                          group=OPTIM,
                                          help="clip gradients to this norm (0: no clipping)")
    precision: str = setting("fp32", Rule("choice", choices=PRECISIONS), group=OPTIM,
                             help="autocast precision (auto: bf16 where the hardware computes it natively)")
    max_length: int = setting(128, _COUNT, group=OPTIM, help="truncate inputs to this many tokens")
    seed: int = setting(0, _SEED, group=OPTIM, help="seed of the initialisation and of the batch order")
    # data and evaluation
    data_source: str = setting("local", Rule("choice", choices=DATA_SOURCES), group=DATA,
                               help="GLUE from glue_data TSV files (local) or the Hugging Face hub")
    custom: dict[str, Any] | None = setting(
        None, Rule("mapping", optional=True, hint="train, dev, text_columns, label_column, type"),
        flag=None)  # cli.py: --train-file, --eval-file, --text-columns, --label-column, --regression
    max_train: int | None = setting(None, _OPT_COUNT, group=DATA, help="seeded subsample of the training split")
    max_eval: int | None = setting(None, _OPT_COUNT, group=DATA, help="seeded subsample of each evaluation split")
    data_seed: int = setting(0, _SEED, group=DATA, help="seed of the subsamples and of the selection split")
    selection_size: float = setting(0.0, Rule("float", 0), group=DATA,
                                    help="carve a selection split from train (count or fraction)")
    eval_every: int = setting(0, Rule("int", 0, COUNT_MAX), group=DATA,
                              help="evaluate every N steps (and always at the end)")
    eval_batch_size: int = setting(64, _COUNT, group=DATA, help="examples per evaluation batch")
    # evaluation cost (issue 25; in the key when set: they change the data a run trains on or the curves it records)
    selection_max: int | None = setting(None, _OPT_COUNT, key="when_set", group=DATA,
                                        help="cap the selection split at N examples (the rest stays in train)")
    # whether the official splits are scored at all (issue 27): a search's trial runs are judged on the selection
    # split alone, and scoring STS-B's 1,500 dev pairs cost more than a first rung's training; in the key when off
    score_official: bool = setting(True, _BOOL, key="when_set", group=DATA, flag="--no-score-official",
                                   help="score only the selection split, not the task's official evaluation "
                                        "splits (dev): a search's trial runs do (needs --selection-size)")
    eval_every_max: int | None = setting(None, _OPT_COUNT, key="when_set", group=DATA,
                                         help="score a seeded subsample of N examples per split at each "
                                              "--eval-every evaluation (the final evaluation scores every example)")
    # how the classifier reads the encoder (issue 25 §1; models.heads declares the heads of each architecture and
    # auto's choice). Resolved before the key; in it only when the resolved head is not the transformers head
    # every run used before (the pooler frozen), so only runs whose head changed have new keys.
    head: str = setting("auto", Rule("choice", choices=HEADS), key="when_set", keyed_as_default=HEADS_KEYED_AS_BEFORE,
                        group=TRAIN,
                        help="how the classifier reads the encoder: cls-pooler ([CLS] through the frozen pooler), "
                             "cls-pooler-trained, mean (masked mean of the last hidden states), model (the "
                             "architecture's own head), auto (its default: mean for sentence-transformers "
                             "encoders such as minilm, cls-pooler for other BERT, model otherwise)")
    # speed options that change what is computed (in the key when set: they were added after runs were stored)
    bucket: bool = setting(False, _BOOL, key="when_set", group=OPTIM,
                           help="draw training batches from length buckets (less padding)")
    feature_cache: bool = setting(False, _BOOL, key="when_set", group=OPTIM,
                                  help="cache the hidden states of frozen lower layers and skip them (they run "
                                       "without dropout)")
    # torch.compile of the training step (issue 26 §2). Not in the key: it computes what eager computes. Measured
    # (benchmarks/compile.py, BENCHMARKS.md §11): eager and compiled losses agree within 2e-7 relative over 60 steps
    # (MiniLM LoRA q,v on SST-2; a tiny LLaMA), inductor drawing dropout from torch's own generator
    # (fallback_random), so the key, the dropout masks and resume are the same either way. Off by default: on the
    # 2-core CPU compiling costs 389 s and the step 0.87x eager, paying back after ~900 steps, not on a 200-step job.
    compile: bool = setting(False, _BOOL, key="never", group=OPTIM,
                            help="torch.compile the model for training steps (same numbers, not in the run key; "
                                 "the first steps compile, evaluation runs eagerly)")
    # memory: carried by the schema and the Runtime; what they do is implemented with them (issue 12)
    gradient_checkpointing: bool = setting(False, _BOOL, key="when_set", group=MEMORY,
                                           help="recompute activations in the backward pass (less memory, slower)")
    quantize: str | None = setting(None, Rule("choice", optional=True, choices=QUANTIZE), key="when_set",
                                   group=MEMORY, help="load the frozen base weights quantized (QLoRA-style)")
    quant_compute_dtype: str | None = setting(None, Rule("choice", optional=True, choices=COMPUTE_DTYPES),
                                              key="when_set", group=MEMORY,
                                              help="dtype 4-bit layers compute in (default: bf16 where supported, else fp32)")
    # generation tasks (issue 13; in the key when set, so classification keys stay as they were)
    template: str | None = setting(None, Rule("text", optional=True), key="when_set", group=DATA,
                                   help="prompt template of a generation task: alpaca, metamath, plain, chat "
                                        "(default: the task's own; part of the run key)")
    train_on_inputs: bool = setting(False, _BOOL, key="when_set", group=DATA,
                                    help="generation: the loss covers the prompt too, not only the response")
    max_new_tokens: int | None = setting(None, _OPT_COUNT, key="when_set", group=DATA,
                                         help="generation: tokens generated per answer (default: each eval set's own)")
    train_data: str | None = setting(None, Rule("text", optional=True), key="when_set", group=DATA, sweep_flag=True,
                                     content=True,
                                     help="training set of a generation suite: a JSON/JSONL file (commonsense_170k, "
                                          "math_10k, MetaMathQA) or a source: boolq, arc_e, arc_c, obqa")
    forgetting_file: str | None = setting(None, Rule("text", optional=True), key="when_set", group=DATA, content=True,
                                          help="generation: held-out text (.txt lines or .jsonl 'text') whose LM "
                                               "loss before/after training is the forgetting score")
    # environment (not part of the run's identity)
    data_dir: str | None = setting(None, Rule("text", optional=True), key="never", group=DATA, in_suite=False,
                                   sweep_flag=True, help="glue_data folder (default: $EFT_DATA_DIR)")
    device: str = setting("auto", Rule("choice", choices=DEVICES), key="never", group=ENV, in_suite=False,
                          sweep_flag=True, help="where to compute (auto: a CUDA GPU if there is one)")
    progress: bool = setting(True, _BOOL, key="never", in_suite=False, flag=None)  # cli.py: --no-progress
    export_dir: str | None = setting(None, Rule("text", optional=True), key="never", group=ENV, in_suite=False,
                                     aliases=("--export",), help="save the trained adapter / weights here")
    overwrite: bool = setting(False, _BOOL, key="never", group=ENV, in_suite=False,
                              help="empty a non-empty --export-dir before exporting (without it such a folder is "
                                   "refused)")
    trust_remote_code: bool = setting(False, _BOOL, key="never", group=ENV, in_suite=False, cli_only=True,
                                      help="allow a hub model's own code to run")
    # checkpoints and trackers: how a run is kept and watched, not what it computes (never in the key)
    checkpoint_every: int | None = setting(None, Rule("int", 0, COUNT_MAX, optional=True), key="never", group=MEMORY,
                                           help="save a resumable checkpoint every N steps (0: none; default: every "
                                                "max(100, steps/10) steps for runs of 500 steps or more)")
    keep_checkpoints: bool = setting(False, _BOOL, key="never", group=MEMORY,
                                     help="keep the step checkpoints after the run is done")
    tracker: list[str] = setting(rule=Rule("names", hint="experiment trackers"), factory=list, key="never",
                                 group=ENV, metavar="NAME[,NAME]", help="report the run to these trackers")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field against its :data:`RULES` entry (type, range, canonical form), then the rules that
        tie fields together. Values are replaced by their canonical form, so ``4`` and ``4.0``, ``q,v`` and ``qv``
        give the same key. The rules that need tasks, data or methods (a task's one spelling, the user's data
        spec, λ against the targets' roles) are checked when the run is resolved (:mod:`efficientft.resolve`)."""
        if self.task is None:
            self.task = CUSTOM_TASK if self.custom is not None else DEFAULT_TASK
        for name, rule in RULES.items():  # dataclass field order: the first bad field is the one reported
            setattr(self, name, rule.check(name, getattr(self, name)))
        if self.epochs is not None and self.steps is not None:
            raise ConfigError("give either epochs or steps, not both.")
        if self.selection_size >= 1 and not self.selection_size.is_integer():  # a count is whole, not cut down
            raise ConfigError(f"selection_size must be a fraction of train in (0, 1) or a whole number of examples, "
                              f"got {self.selection_size!r}.")
        if self.selection_max is not None and not self.selection_size:
            raise ConfigError(f"selection_max={self.selection_max} caps the selection split, but there is none; give "
                              f"selection_size too (a count or a fraction of train).")
        if not self.score_official and not self.selection_size:
            raise ConfigError("score_official=false leaves the selection split as the only one scored, but there is "
                              "none; give selection_size too (a count or a fraction of train).")
        if self.eval_every_max is not None and not self.eval_every:
            raise ConfigError(f"eval_every_max={self.eval_every_max} subsamples the evaluations between steps, but "
                              f"there are none; give eval_every too (evaluate every N steps).")
        self.targets = canonical_targets(self.targets)
        self.method = self.method.lower()
        self.role_lr = _check_role_lr(self.role_lr)
        if "v" in self.role_lr and self.lr_ratio != 1.0 and float(self.role_lr["v"]) != float(self.lr_ratio):
            raise ConfigError(f"lr_ratio={self.lr_ratio} and role_lr.v={self.role_lr['v']} disagree; give one of them.")
        self.tracker = check_tracker_names(self.tracker)  # names this version knows (the schema checked the type)
        if self.quant_compute_dtype is not None and self.quantize != "4bit":
            raise ConfigError(f"quant_compute_dtype is the compute dtype of 4-bit layers; it needs quantize 4bit, "
                              f"got quantize {self.quantize!r}.")

    # ------------------------------------------------------------------ derived values
    @property
    def role_ratios(self) -> dict[str, float]:
        """Per-role learning-rate multipliers: ``role_lr`` with ``v`` set to λ."""
        ratios = {str(k): float(v) for k, v in self.role_lr.items()}
        if self.lr_ratio != 1.0 or "v" not in ratios:
            ratios["v"] = float(self.lr_ratio)
        return ratios

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (everything but where things live and how they are shown).

        A local file or folder is named by its content (``sha256:<hex>``), not by its path: an edited file is a
        new experiment, the same file reached by another path the same one. The user's data files are named by
        the hashes :func:`efficientft.resolve.resolve_custom` records, their paths left out."""
        d = self.to_dict()
        for name in ENVIRONMENT_FIELDS:
            d.pop(name, None)
        for name in KEY_WHEN_SET:
            if name in d and keyed_as_default(name, d[name]):
                d.pop(name)
        for name in CONTENT_FIELDS:
            if isinstance(d.get(name), str):
                d[name] = content_identity(d[name], _read_first(name))
        if d.get("custom") and "sha256" in d["custom"]:
            d["custom"] = {k: v for k, v in d["custom"].items() if k not in ("train", "dev")}
        return d

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> RunConfig:
        """A config from a mapping (YAML, the command line); ``where`` (a file name) starts every error message."""
        at = f"{where}: " if where else ""
        if not isinstance(d, dict):
            raise ConfigError(f"{at}a run config must be a mapping of field: value, got {type(d).__name__}.")
        names = cls.field_names()
        unknown = [k for k in d if k not in names]
        if unknown:
            k = unknown[0]
            raise ConfigError(f"{at}unknown field {k!r}.{did_you_mean(str(k), names)} Known fields: {', '.join(names)}.")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{at}{e}", field=e.field) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        d = load_yaml(path)
        if isinstance(d, dict):
            refuse_file_only_flags(d, str(path))
        return cls.from_dict(d, where=str(path))


# ---------------------------------------------------------------------------------------------- derived tables
# Everything below is read off the fields' Settings: nothing here is written a second time.
SETTINGS: dict[str, Setting] = {f.name: f.metadata["setting"] for f in fields(RunConfig)}
# One rule per field, in field order: the type, the range that runs, the canonical spelling.
RULES: dict[str, Rule] = {name: s.rule for name, s in SETTINGS.items()}
# Fields that say where things are or how to display them; they do not change a result and are not in the key.
ENVIRONMENT_FIELDS = frozenset(name for name, s in SETTINGS.items() if s.key == "never")
# Options added after runs were stored, whose default computes what runs computed before the option existed: they
# are in the key only when set, so that adding them changed no earlier run's key.
DEFAULTS: dict[str, Any] = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                            for f in fields(RunConfig)}
KEY_WHEN_SET = {name: DEFAULTS[name] for name, s in SETTINGS.items() if s.key == "when_set"}


def keyed_as_default(name: str, value: Any) -> bool:
    """Whether a ``when_set`` setting's value computes what runs computed before the setting existed (its default,
    or a resolved form of it): the key and the report leave it out."""
    return value == KEY_WHEN_SET[name] or value in SETTINGS[name].keyed_as_default


# Settings that may name a local file or folder: the key holds its content hash (efficientft.content.identity).
CONTENT_FIELDS = tuple(name for name, s in SETTINGS.items() if s.content)
# Settings a file may not make: they are a decision the user takes on the command line, each time.
FILE_ONLY_FLAGS = {name: s.flag_name(name) for name, s in SETTINGS.items() if s.cli_only}
_RATIO = positive()


def refuse_file_only_flags(d: dict, where: str) -> None:
    """``trust_remote_code`` runs a model's own Python code: a YAML file (someone else's, perhaps) may not ask it.
    ``false`` is harmless (a saved config says it)."""
    for name, flag in FILE_ONLY_FLAGS.items():
        if name in d and d[name] not in (False, None):
            raise ConfigError(f"{where}: {name} cannot be set in a file (it lets a model's own code run on this "
                              f"machine); pass {flag} on the command line instead.")


def _read_first(name: str) -> tuple[str, ...]:
    """Names its reader takes before a local path of that name: the bundled model's aliases, the training sources."""
    return {"model": MODEL_ALIASES, "train_data": TRAIN_SOURCES}.get(name, ())


def coerce_setting(name: str, value: Any, where: str = "") -> Any:
    """One field's value converted by its rule, its range not yet checked (for suites, which convert each value
    where it is written; the runs they expand to check the ranges)."""
    try:
        return RULES[name].convert(name, value)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e), field=e.field) from None


def _check_role_lr(role_lr: dict) -> dict[str, float]:
    """Role names case-folded and known, each ratio a positive finite number."""
    out: dict[str, float] = {}
    for raw, ratio in role_lr.items():
        role = raw.strip().lower()
        if role not in ROLES:
            raise ConfigError(
                f"role_lr names an unknown role {raw!r}.{did_you_mean(role, ROLES)} Roles: {', '.join(ROLES)}."
            )
        if role in out:
            raise ConfigError(f"role_lr names role {role!r} twice.")
        out[role] = _RATIO.check(f"role_lr[{role!r}]", ratio)
    return out


def check_max_length(max_length: int, tokenizer: Any, pair: bool) -> None:
    """A length that leaves no room for text after the tokenizer's special tokens truncates nothing (the
    tokenizer gives up and keeps whole inputs); refuse it, naming the minimum."""
    specials = tokenizer.num_special_tokens_to_add(pair=pair)
    least = specials + (2 if pair else 1)
    if max_length < least:
        kind = "a pair of texts" if pair else "one text"
        raise ConfigError(f"max_length {max_length} is too small: the tokenizer adds {specials} special tokens to "
                          f"{kind}, so at least {least} are needed (one per text); give --max-length {least} or more.")


def load_yaml(path: str | Path) -> Any:
    """Read a YAML run config safely; a syntax error names the file, line and column, an alias bomb is refused."""
    return read_yaml(Path(path), "config file")
