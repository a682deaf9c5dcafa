"""Tasks: GLUE (local ``glue_data`` files or the hub), sampled GLUE for offline machines, generation tasks (GSM8K,
the LLM-Adapters suites, synthetic tasks) and the user's own files."""

from __future__ import annotations

from ..registry import Registry
from ..vocab import TASK_ALIASES
from .base import ENV_DATA_DIR, DataOptions, Examples, Task
from .custom import CustomTask
from .generative import custom_instruct_task, generative_tasks
from .glue import GLUE_TASKS, SAMPLE_TASKS

TASKS: Registry[Task] = Registry("task")
for _t in [*GLUE_TASKS, *SAMPLE_TASKS, *generative_tasks()]:
    TASKS.add(_t.name, _t)

ALIASES = TASK_ALIASES  # common spellings of the GLUE names


def get_task(name: str, custom: dict | None = None) -> Task:
    """The task called ``name``; ``custom`` (train/dev files, columns) builds the user's own task."""
    if custom:  # the file hashes of a resolved config say what was read; they are not a reading option
        spec = {k: v for k, v in custom.items() if k != "sha256"}
        if spec.get("type") == "generation":  # instruction rows, judged by generation
            return custom_instruct_task(name if name not in TASKS else "custom", spec)
        return CustomTask.from_spec({"name": name if name not in TASKS else "custom", **spec})
    return TASKS.get(ALIASES.get(name.lower(), name))


__all__ = ["TASKS", "ENV_DATA_DIR", "DataOptions", "Examples", "Task", "CustomTask", "get_task"]
