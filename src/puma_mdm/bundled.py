"""What the package ships: the bundled configs (``puma configs``) and the trained Sudoku model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from puma_mdm.errors import PumaError


def bundled_config(name: str) -> Path:
    """Path of a config shipped inside the package (``sort``, ``sudoku`` ...)."""
    path = Path(str(resources.files("puma_mdm") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise PumaError(f"no bundled config named {name!r}; see `puma configs`")
    return path


def config_path(value: str) -> Path:
    """A file path, or the name of a bundled config."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return bundled_config(value)


def default_model() -> Path:
    """The Sudoku model shipped inside the package."""
    return Path(str(resources.files("puma_mdm") / "assets" / "sudoku"))


def bundled_config_names() -> list[str]:
    """The names :func:`bundled_config` accepts, in the order of their file names."""
    files = sorted(f.name for f in (resources.files("puma_mdm") / "configs").iterdir())
    return [name.removesuffix(".yaml") for name in files if name.endswith(".yaml")]
