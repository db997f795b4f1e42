"""Pictures: the order in which a model decoded a Sudoku, the mismatch meter, and the figure
helpers every benchmark plot goes through."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it to ``path`` (creating its directory) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def sudoku_order_png(
    grid: np.ndarray, puzzle: np.ndarray, order: np.ndarray, path: str | Path, title: str = ""
) -> Path:
    """Draw the solved grid; clue cells grey, every other cell coloured by the step at which it
    was decoded (its step number in the corner)."""
    grid, puzzle, order = (np.asarray(a).reshape(9, 9) for a in (grid, puzzle, order))
    steps = np.where(puzzle > 0, np.nan, order.astype(float))
    fig, ax = plt.subplots(figsize=(5.2, 5.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(steps), cmap=cmap)
    for r in range(9):
        for c in range(9):
            clue = puzzle[r, c] > 0
            ax.text(
                c,
                r,
                str(grid[r, c]) if grid[r, c] else "·",
                ha="center",
                va="center",
                fontsize=14,
                fontweight="bold" if clue else "normal",
                color="black" if clue else "white",
            )
            if not clue:
                ax.text(
                    c + 0.42,
                    r - 0.42,
                    str(order[r, c] + 1),
                    ha="right",
                    va="top",
                    fontsize=6,
                    color="white",
                )
    for i in range(10):
        width = 2.5 if i % 3 == 0 else 0.5
        ax.axhline(i - 0.5, color="black", linewidth=width)
        ax.axvline(i - 0.5, color="black", linewidth=width)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "decoding order (grey: clues)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="decoding step")
    return save_figure(fig, path, dpi=110)


def mismatch_png(summary: dict, path: str | Path, title: str = "") -> Path:
    """The mismatch meter's summary (mismatch.py): loss per stage bin on decoder masks, random
    masks and decoder states (±1 standard error), and below it the gap decoder − random masks."""
    rows = summary["bins"]
    x = np.array([(r["stage"][0] + r["stage"][1]) / 2 for r in rows])

    def series(name: str) -> tuple[np.ndarray, np.ndarray]:
        mean = np.array([np.nan if r[name]["mean"] is None else r[name]["mean"] for r in rows])
        se = np.array([r[name]["se"] or 0.0 for r in rows])
        return mean, se

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    styles = {  # decoder states first, so the decoder masks are drawn over them where equal
        "decoder_states": ("decoder states (own tokens)", "tab:grey", ":", 3.5),
        "decoder_masks": ("decoder masks (inference)", "tab:orange", "-", 1.5),
        "random_masks": ("random masks (same count)", "tab:blue", "-", 1.5),
    }
    for name, (label, color, line, width) in styles.items():
        mean, se = series(name)
        top.errorbar(
            x,
            mean,
            yerr=se,
            color=color,
            ls=line,
            lw=width,
            marker="o",
            ms=4,
            capsize=3,
            label=label,
        )
    top.set(ylabel="mean CE on masked positions (nats)", title=title or "mismatch meter")
    top.legend()
    top.grid(alpha=0.3)
    mean, se = series("gap")
    bottom.errorbar(x, mean, yerr=se, color="black", marker="o", ms=4, capsize=3)
    bottom.axhline(0, color="grey", lw=0.8)
    bottom.set(xlabel="stage: fraction of non-prompt positions unmasked", ylabel="gap (nats)")
    bottom.set_xlim(0, 1)
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)
