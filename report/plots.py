"""PNG plots of the report's tables (matplotlib is imported when a plot is drawn)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from llqa.io import atomic_write_bytes
from report.fields import heatmap_cells
from report.inputs import EvalResult
from report.runs import Run
from report.tables import Table, fmt, length_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no window, no display needed
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing plotted (every cell missing): no empty legend box
        ax.legend(fontsize=7)


def plot_perplexity(path: Path, table: Table, lengths: Sequence[int]) -> Path:
    """Perplexity (log scale) against eval length (log2 scale), one line per run; missing cells left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in table.rows:
        pts = [(n, v) for n, v in zip(lengths, row[2:], strict=True) if isinstance(v, int | float) and v > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=4, label=row[0])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(lengths), [length_label(n) for n in lengths])
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())  # label minor ticks in a narrow range
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity (token-weighted)")
    ax.set_title(table.title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return _save_png(fig, path)


def plot_passkey_heatmaps(path: Path, pairs: Sequence[tuple[str, EvalResult]]) -> Path:
    """One depth × length accuracy heatmap per run, stacked, on one colour scale (grey: not run)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 1, figsize=(9, 2.8 * len(pairs) + 0.6), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = None
    for ax, (label, r) in zip(axes[:, 0], pairs, strict=True):
        cells = heatmap_cells(r)
        lengths = sorted({n for n, _, _ in cells}) or [0]
        depths = sorted({d for _, d, _ in cells}) or [0.0]
        grid = np.full((len(depths), len(lengths)), np.nan)
        for n, d, acc in cells:
            if acc is not None:
                grid[depths.index(d), lengths.index(n)] = acc
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], rotation=90, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ecw = r.summary.get("effective_context_window")
        ax.set_title(f"{label}: effective context window {fmt(ecw, 'int')}", fontsize=9)
        ax.set_ylabel("key depth", fontsize=8)
    axes[-1, 0].set_xlabel("prompt length (tokens)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="accuracy", shrink=0.9)
    return _save_png(fig, path)


def plot_accuracy(path: Path, table: Table, xs: Sequence[int], title: str) -> Path:
    """Accuracy against length, one line per run (retrieval tables)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in table.rows:
        pts = [(x, v) for x, v in zip(xs, row[len(row) - len(xs) :], strict=True) if isinstance(v, int | float)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", markersize=4, label=row[0])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("N")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save_png(fig, path)


def plot_losses(path: Path, runs: Sequence[Run]) -> Path:
    """Training loss against optimizer step, one line per run (with a moving mean over 10 steps when long)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        pts = [(r["step"], r["loss"]) for r in run.training.log if isinstance(r.get("loss"), int | float)]
        if not pts:
            continue
        steps, losses = zip(*pts, strict=True)
        line = ax.plot(
            steps,
            losses,
            linewidth=1,
            alpha=0.35 if len(pts) >= 50 else 1.0,
            label=None if len(pts) >= 50 else run.label,
        )[0]
        if len(pts) >= 50:
            k = 10
            mean = [
                sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, mean, color=line.get_color(), linewidth=1.5, label=f"{run.label} (mean of 10 steps)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean NLL per scored token)")
    ax.set_title("Training loss", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save_png(fig, path)
