"""Tasks by name (registry.py): importing this package registers every bundled task."""

from puma_mdm.tasks import math_programs, sudoku, text, tinygsm  # noqa: F401  (register)
from puma_mdm.tasks.base import Examples, Task
from puma_mdm.tasks.registry import TASKS, build_task, register_task

__all__ = ["TASKS", "Examples", "Task", "build_task", "register_task"]
