"""The layering (issue 24): what a layer may import, checked where it matters to a user."""

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "peft")


def test_a_run_config_is_built_and_serialised_without_torch():
    """A RunConfig is a typed value of the core: building, checking and serialising it loads no torch,
    transformers or peft (its resolution, which needs methods and tasks, is another module)."""
    code = (
        "import json, sys\n"
        "from efficientft.config import RunConfig\n"
        "a = RunConfig()\n"
        "b = RunConfig.from_dict({'task': 'rte', 'method': 'LoRA', 'targets': 'o,v,q,k', 'lr_ratio': 4,\n"
        "                         'role_lr': {'O': 2}, 'tracker': ['wandb'], 'precision': 'auto'})\n"
        "out = {'a': a.to_dict(), 'b': b.to_dict(), 'yaml': b.to_yaml(), 'identity': b.identity(),\n"
        f"       'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}\n"
        "print(json.dumps(out, default=str))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["loaded"] == []
    assert out["a"]["task"] == "sst2" and out["a"]["method"] == "lora"
    b = out["b"]  # the core rules ran: one spelling of the method, the targets, the roles and the trackers
    assert (b["method"], b["targets"], b["role_lr"], b["tracker"]) == ("lora", "qkvo", {"o": 2.0}, ["wandb"])
    assert "targets: qkvo" in out["yaml"] and "tracker" not in out["identity"]


def test_the_core_vocabulary_is_the_one_its_layers_act_on():
    """The names a config is checked against (core) are the ones models, tasks and trackers use: one place each."""
    from efficientft import trackers, vocab
    from efficientft.models import loading, roles
    from efficientft.tasks import ALIASES
    from efficientft.tasks.instruct import TRAIN_FILES

    assert roles.ROLES is vocab.ROLES and roles.PRESETS is vocab.PRESETS and roles.parse_roles is vocab.parse_roles
    assert loading.ALIASES is vocab.MODEL_ALIASES and ALIASES is vocab.TASK_ALIASES
    assert trackers.TRACKERS is vocab.TRACKERS
    assert tuple(TRAIN_FILES) == vocab.TRAIN_SOURCES
