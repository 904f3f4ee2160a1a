"""PNG plots of the retrieval evals (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from llqa.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _length_label(n: float) -> str:
    return f"{n / 1024:g}k" if n >= 1024 and n % 256 == 0 else f"{n:g}"


def accuracy_heatmap(
    path: str | Path,
    lengths: Sequence[int],
    depths: Sequence[float],
    accuracy: Sequence[Sequence[float | None]],
    title: str,
) -> Path:
    """Depth (rows, 0 at the top) x length (columns) heatmap; accuracy[d][l] in [0, 1] or None (not run)."""
    plt = _pyplot()
    import numpy as np

    grid = np.array([[math.nan if a is None else a for a in row] for row in accuracy], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(lengths) + 2), max(3.0, 0.35 * len(depths) + 1.5)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")  # grey: cell not run (skipped)
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], rotation=90, fontsize=7)
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("depth of the key (share of the filler before it)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(fig, path)


def accuracy_vs_length(
    path: str | Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str = "prompt length (tokens)",
    threshold: float | None = None,
    marker: float | None = None,
    marker_label: str | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    ylabel: str = "accuracy",
) -> Path:
    """Accuracy (y, 0..1) against length (x), one line per series; optional threshold and a vertical marker."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
        for x, y, text in zip(xs, ys, (annotations or {}).get(name, ()), strict=False):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    if marker is not None and marker > 0:
        ax.axvline(marker, color="tab:red", linestyle=":", linewidth=1, label=marker_label)
    ax.set_ylim(-0.03, 1.1 if annotations else 1.03)  # room for labels above points at 1.0
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def score_grid(
    path: str | Path,
    rows: Sequence[str],
    lengths: Sequence[int],
    scores: Sequence[Sequence[float | None]],
    title: str,
    vmax: float = 100.0,
    label: str = "score",
) -> Path:
    """Named rows (e.g. tasks) x length (columns) heatmap with each cell's value written in it; scores[r][l]
    in [0, vmax] or None (not run, grey)."""
    plt = _pyplot()
    import numpy as np

    grid = np.array([[math.nan if s is None else s for s in row] for row in scores], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(lengths) + 3), max(3.0, 0.38 * len(rows) + 1.5)))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    for r, row in enumerate(scores):
        for c, s in enumerate(row):
            if s is not None:
                ax.text(c, r, f"{s:.1f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return _save(fig, path)
