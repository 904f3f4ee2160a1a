"""`llqa report`: one markdown report from eval results and training runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import OutOpt, console, err_console

app = typer.Typer(rich_markup_mode=None)


@app.command("report")
def report_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Eval --out directories (result.json), training run directories (train_config.json, log.jsonl), "
            "result.json files, or folders holding any of them (searched recursively).",
            show_default=False,
            metavar="PATH",
        ),
    ],
    out: OutOpt = Path("report"),
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            metavar="PATH=LABEL",
            help="Label a run: PATH is a training run directory or --model value "
            "(every eval of that model), or one eval --out directory (just its run). Repeatable. Default labels: "
            "the run directory's name, or the --model value, with (PI ×f) when RoPE was scaled without training.",
        ),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="Heading of the report.")] = "llqa report",
) -> None:
    """Write a markdown report (report.md, report.json, PNG plots) into --out from any mix of eval results and
    training runs. A run is a model at one RoPE scaling: its rows line up across the tables. Tables: perplexity
    per run × eval length (token-weighted ppl, per data setting); passkey effective context window and accuracy
    per length; LongChat topic/line accuracy per N; training cost (steps, tokens, train time = sum of step
    times, tokens/s, peak GPU memory, final loss = mean of the last 10 steps). Plots: perplexity against
    length, passkey depth × length heatmaps, retrieval accuracy, loss curves. Numbers are copied from the
    result files; a cell no result provides shows as —. Files that are not llqa results are listed, not fatal."""
    from report import write_report

    rep = write_report(paths, out, names=name or [], title=title)
    for s in rep.skipped:
        err_console.print(f"[yellow]not included:[/] {s.path}: {s.reason}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]report[/]: {rep.markdown} ({len(rep.runs)} runs, {len(rep.tables)} tables, {len(rep.plots)} plots)",
        highlight=False,
    )
