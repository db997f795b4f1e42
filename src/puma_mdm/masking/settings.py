"""The PUMA settings, declared and checked once: the ``training.puma`` section of a run config
and ``PumaArguments`` of the ``transformers.Trainer`` integration are both these fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from puma_mdm.errors import ConfigError
from puma_mdm.masking.progressive import MODE_ALIASES, MODES


@dataclass
class PumaSettings:
    """How the pool unmasks (docs/algorithms.md §3): ``k_schedule`` ``[[K, from_step], ...]``
    (K stages per sequence from that training step on), ``mode`` (``fixed``: a fixed
    1/K-th of the masks per stage; ``confidence_collapse``: also every position whose
    confidence reaches ``tau``; the old name ``standard`` of ``fixed`` is accepted)."""

    k_schedule: list[list[int]] = field(default_factory=lambda: [[8, 0]])
    mode: str = "fixed"
    tau: float = 0.9

    def __post_init__(self) -> None:
        self.mode = MODE_ALIASES.get(self.mode, self.mode)

    def check(self, where: str) -> None:
        """Raise :class:`ConfigError` naming the first bad field as ``{where}.field``."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{where}.{msg}")

        need(self.mode in MODES, f"mode: {self.mode!r} is not fixed or confidence_collapse")
        schedule = self.k_schedule
        need(
            len(schedule) > 0 and all(len(entry) == 2 for entry in schedule),
            "k_schedule must be a non-empty list of [K, step] pairs",
        )
        for pair in schedule:
            need(
                pair[0] >= 1 and pair[1] >= 0,
                f"k_schedule: {list(pair)} needs K ≥ 1 and a start step ≥ 0",
            )
        starts = [pair[1] for pair in schedule]
        need(
            starts == sorted(starts) and starts[0] == 0,
            f"k_schedule: start steps {starts} must begin at 0 and increase",
        )
        need(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
