"""Load a trained model together with the task it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from puma_mdm.errors import ModelLoadError, PumaError
from puma_mdm.kinds import load_model
from puma_mdm.tasks import Task, build_task

TASK_FILE = "task.json"


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a run directory holding ``model/``."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"no such model directory: {path}")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def load_trained(
    path: str | Path,
    expect_task: str | None = None,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Task]:
    """The model in ``path`` and its task (from ``task.json``); with ``expect_task`` a model
    trained on another task is refused. Code shipped in a Hugging Face model directory runs only
    with the caller's ``trust_remote_code``, never because of a file in the directory."""
    directory = resolve_model_dir(path)
    model = load_model(directory, device, trust_remote_code)
    record_path = directory / TASK_FILE
    if not record_path.is_file():
        raise ModelLoadError(f"{directory} has no {TASK_FILE}, so its task is unknown")
    try:
        record = json.loads(record_path.read_text())
        if not (isinstance(record.get("name"), str) and isinstance(record.get("options"), dict)):
            raise ValueError("expected an object with a task name and its options")
    except (ValueError, AttributeError) as err:  # also bad JSON and bad UTF-8
        raise ModelLoadError(f"{record_path}: not a valid task record ({err})") from None
    if expect_task is not None and record["name"] != expect_task:
        raise ModelLoadError(
            f"{directory} holds a model for task {record['name']!r}, not {expect_task!r}"
        )
    try:
        task = build_task(record["name"], record["options"])
    except PumaError as err:
        raise ModelLoadError(f"{record_path}: {err}") from None
    task.restore(directory)  # e.g. the tokenizer trained with the model
    if (task.vocab_size, task.seq_len) != (model.cfg.vocab_size, model.cfg.seq_len):
        raise ModelLoadError(
            f"{directory}: the model's vocabulary/length ({model.cfg.vocab_size}, "
            f"{model.cfg.seq_len}) does not fit task {task.name!r} "
            f"({task.vocab_size}, {task.seq_len})"
        )
    model.eval()
    return model, task
