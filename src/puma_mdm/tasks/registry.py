"""The registry of tasks by name. ``build_task(name, options)`` validates the options against the
task's own dataclass, so a misspelt option fails with the list of known ones."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, get_type_hints

from puma_mdm.errors import ConfigError
from puma_mdm.tasks.base import Task
from puma_mdm.tasks.toy import SortTask

TASKS: dict[str, type[Task]] = {SortTask.name: SortTask}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def build_task(name: str, options: dict[str, Any] | None = None) -> Task:
    if name not in TASKS:
        raise ConfigError(f"task.name: unknown task {name!r}; choose one of {sorted(TASKS)}")
    cls = TASKS[name]
    options = dict(options or {})
    hints = get_type_hints(cls.Options)
    known = {f.name for f in fields(cls.Options)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"task.options: unknown option(s) {unknown} for task {name!r}; known: {sorted(known)}"
        )
    for key, value in options.items():
        expected = hints[key]
        widened = expected is float and isinstance(value, int)
        if isinstance(expected, type) and not isinstance(value, expected) and not widened:
            raise ConfigError(f"task.options.{key}: expected {expected.__name__}, got {value!r}")
    try:
        return cls(cls.Options(**options))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"task.options: {err}") from err
