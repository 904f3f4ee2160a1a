"""`llqa report`: one markdown report (tables + PNG plots) from any mix of eval results and training runs.

Inputs are paths: an eval's `--out` directory (its `result.json`, see `llqa.results`), a training run
directory (`train_config.json` + `log.jsonl`, see `trainer.loop`), a `result.json` file, or any folder
holding such directories (walked recursively; checkpoints, packed data and TensorBoard folders are skipped).

A *run* is one row of every table: a model at one RoPE scaling. Eval results are grouped by the model they
scored (`model.spec` in result.json: a local path is resolved against the current directory, and a merged
model points back at its training run through `merged_from`) and by its RoPE method and factor (θ for
`theta`), so the base model with and without Position Interpolation, or with PI ×4 and YaRN ×4, are separate
rows, and a training run's perplexity, passkey and
retrieval numbers line up with its training cost.

Numbers are copied from the result files, never recomputed: perplexity is the token-weighted `ppl` of
each length (exp of total NLL / scored tokens, as `semantics` in result.json says), passkey accuracy is
correct / evaluated trials and the effective context window is the eval's own. Training cost comes from
`log.jsonl` (one record per optimizer step; a resumed run's re-logged step keeps its last record):
train time = sum of step times (forward, backward, optimizer; data loading and checkpoint writes are
excluded), tokens/s = tokens trained / train time, peak memory = the largest per-step peak of allocated
GPU memory. A cell no result provides is shown as "—".
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llqa import __version__
from llqa.io import atomic_write_json, atomic_write_text, remove_dead_leftovers, writable_dir
from report.fields import passkey_setting
from report.inputs import MISSING, Inputs, Skipped, collect, read_json
from report.markdown import section
from report.plots import plot_accuracy, plot_losses, plot_passkey_heatmaps, plot_perplexity
from report.runs import Run, group_runs, parse_names
from report.summary import other_table, runs_table, training_table
from report.tables import Table, group
from report.tasks import (
    longqa_setting,
    longqa_table,
    passkey_tables,
    perplexity_tables,
    ruler_setting,
    ruler_tables,
    series_tables,
)


@dataclass
class Report:
    out: Path
    markdown: Path
    tables: list[Table]
    plots: list[Path]
    runs: list[Run]
    skipped: list[Skipped]


def write_report(
    paths: Sequence[str | Path], out: str | Path, names: Sequence[str] = (), title: str = "llqa report"
) -> Report:
    """Collect `paths`, group them into runs, write `report.md`, `report.json` and the PNGs into `out`.

    Everything is rendered into a hidden folder in `out` first and then renamed into place, report.md last: a
    killed run leaves the previous report whole (its leftover folder is removed by the next run), never a
    markdown file that disagrees with its plots."""
    out = Path(out)
    writable_dir(out, "--out", create=False)
    inputs = collect(paths)
    previous = _previous_plots(out)
    runs = group_runs(inputs, parse_names(names))
    writable_dir(out, "--out")
    remove_dead_leftovers(out, ".report-")
    stage = out / f".report-{os.getpid()}"
    stage.mkdir(exist_ok=True)
    try:
        tables, plots = _render(stage, inputs, runs, title)
        for name in [p.name for p in plots] + ["report.json", "report.md"]:  # renames only: the report lands whole
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    plots = [out / p.name for p in plots]
    for name in previous - {p.name for p in plots}:  # plots of an earlier report here that this one lacks
        (out / name).unlink(missing_ok=True)
    return Report(out, out / "report.md", tables, plots, runs, inputs.skipped)


def _render(stage: Path, inputs: Inputs, runs: list[Run], title: str) -> tuple[list[Table], list[Path]]:
    """Write the report's markdown, JSON and plots into `stage`; returns (tables, plots)."""
    sections: list[str] = []
    tables: list[Table] = [runs_table(runs)]
    plots: list[Path] = []
    sections.append(section(tables[0]))

    for i, (t, lengths) in enumerate(perplexity_tables(runs), 1):
        plots.append(plot_perplexity(stage / f"perplexity_{i}.png", t, lengths))
        tables.append(t)
        sections.append(section(t, images=[plots[-1].name]))

    for i, pairs in enumerate(group(runs, ("passkey",), passkey_setting).values(), 1):
        window, per_length = passkey_tables(pairs)
        plots.append(plot_passkey_heatmaps(stage / f"passkey_heatmaps_{i}.png", [(run.label, r) for run, r in pairs]))
        tables += [window, per_length]
        sections += [section(window, images=[plots[-1].name]), section(per_length, level=3)]

    for pairs in group(runs, ("ruler",), ruler_setting).values():
        averages, per_task = ruler_tables(pairs)
        tables += [averages, per_task]
        sections += [section(averages), section(per_task, level=3)]

    for pairs in group(runs, ("longqa",), longqa_setting).values():
        tables.append(longqa_table(pairs))
        sections.append(section(tables[-1]))

    for i, (t, xs, more) in enumerate(series_tables(runs), 1):
        png = plot_accuracy(stage / f"{t.kind}_accuracy_{i}.png", t, xs, t.title)
        plots.append(png)
        tables.append(t)
        sections.append(section(t, images=[png.name]))
        for extra in more:
            tables.append(extra)
            sections.append(section(extra, level=3))

    cost = training_table(runs)
    if cost is not None:
        trained = [run for run in runs if run.training is not None]
        png = plot_losses(stage / "loss.png", trained)
        plots.append(png)
        tables.append(cost)
        sections.append(section(cost, images=[png.name]))

    other = other_table(runs)
    if other is not None:
        tables.append(other)
        sections.append(section(other))
    if inputs.skipped:
        sections.append("## Not included\n\n" + "\n".join(f"- `{s.path}`: {s.reason}" for s in inputs.skipped))

    stamp = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    head = (
        f"# {title}\n\nWritten {stamp} by llqa {__version__} from "
        f"{len(inputs.results)} eval result(s) and {len(inputs.trainings)} training run(s). "
        f"A cell shown as {MISSING} has no result."
    )
    atomic_write_text(stage / "report.md", "\n\n".join([head, *sections]) + "\n")
    atomic_write_json(
        stage / "report.json",
        {
            "title": title,
            "written": stamp,
            "llqa_version": __version__,
            "tables": [t.to_dict() for t in tables],
            "plots": [p.name for p in plots],
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in inputs.skipped],
        },
    )
    return tables, plots


def _previous_plots(out: Path) -> set[str]:
    doc, err = read_json(out / "report.json") if (out / "report.json").is_file() else (None, "none")
    if err or not isinstance(doc, dict):
        return set()
    return {Path(str(p)).name for p in doc.get("plots") or [] if str(p).endswith(".png")}
