"""`llqa build` and `llqa validate`: the LongQA fine-tuning set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import OutOpt, check_ctx, console, err_console

app = typer.Typer(rich_markup_mode=None)


def _recipe_help() -> str:
    from longqa.recipe import available_recipes

    return (
        "A shipped recipe (" + ", ".join(available_recipes()) + ") or a path to a recipe .toml file "
        "(quotas per doc_type/category, token bounds, max questions per document, split, framing, sources)."
    )


@app.command("build")
def build_cmd(
    out: OutOpt,
    recipe: Annotated[str, typer.Option("--recipe", help=_recipe_help())] = "longqa-3k",
    source_dir: Annotated[
        Path | None,
        typer.Option(
            "--source-dir",
            help="Local copies of the sources, one folder per source: DIR/narrativeqa, DIR/qasper, "
            "DIR/arxiv, DIR/leval, DIR/longalpaca, each in a layout the README lists — e.g. what `huggingface-cli "
            "download REPO --repo-type dataset [--revision refs/convert/parquet] --local-dir DIR/NAME` writes. "
            "Sources without one load from the hub.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the split and of every sampled choice (default: the recipe's)."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer counting n_tokens = tokens(instruction) + tokens(output), no special "
            "tokens (any --model value; default: the recipe's, smollm2-135m).",
        ),
    ] = None,
    allow_short: Annotated[
        bool,
        typer.Option("--allow-short", help="Write the set even when a quota cell cannot be filled (never padded)."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the build in a non-empty --out (everything in that folder goes)."),
    ] = False,
) -> None:
    """Build LongQA: human questions and answers over whole papers and novels, framed as LongQA frames them,
    into --out (train/test jsonl + parquet, manifest.json with checksums, a dataset card). Same inputs and
    seed give byte-identical files; a failed or killed build leaves no half-written directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from longqa.build import build, check_out
    from longqa.recipe import load_recipe

    rec = load_recipe(recipe)
    check_out(out, overwrite)  # before the progress display starts
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as bar:

        def progress(name: str, total: int | None):
            task = bar.add_task(name, total=total)
            return lambda n: bar.advance(task, n)

        result = build(
            rec,
            out,
            source_dir=source_dir,
            seed=seed,
            tokenizer=tokenizer,
            allow_short=allow_short,
            progress=progress,
            overwrite=overwrite,
        )
    table = Table(title=f"LongQA {rec.name} -> {result.out}")
    for col in ("cell", "quota", "built", "candidates"):
        table.add_column(col)
    for cell, v in result.manifest["cells"].items():
        style = "red" if v["built"] < v["quota"] else None
        table.add_row(cell, str(v["quota"]), str(v["built"]), str(v["candidates"]), style=style)
    console.print(table)
    c = result.counts
    console.print(
        f"{c['total']} items ({c['by_split'].get('train', 0)} train, {c['by_split'].get('test', 0)} test) "
        f"over {c['documents']} documents; sources {c['by_source']}"
    )
    for s in result.shortfalls:
        err_console.print(f"[yellow]short:[/] {s}", highlight=False)


@app.command("validate")
def validate_cmd(
    path: Annotated[Path, typer.Argument(help="A directory written by `llqa build`, or one .jsonl file.")],
    ctx: Annotated[
        int | None, typer.Option("--ctx", help="Context you will train at: items whose n_tokens exceed it are errors.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the full JSON report here.")] = None,
    recount: Annotated[
        bool,
        typer.Option(
            "--recount/--no-recount",
            help="Recount n_tokens with the manifest's tokenizer (fast tokenizer only, no torch).",
        ),
    ] = True,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer for the recount when there is no manifest (a lone .jsonl)."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="Recipe whose framing to check when there is no manifest.")
    ] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Problems listed on screen (0: none).")] = 20,
) -> None:
    """Check a LongQA build: schema and types, categories, empty fields, token counts (recounted; --ctx
    bound), duplicate and near-duplicate questions and documents, answers given away by the question,
    extractive answers absent from the document, a document in both splits, quotas, framing, control
    characters and mojibake, manifest checksums. Exit 0 when clean, 1 with errors (warnings don't fail)."""
    from rich.markup import escape

    from llqa.io import atomic_write_json, writable_file
    from longqa.validate import validate

    check_ctx(ctx)
    if report is not None:
        writable_file(report, "--report")  # before the work, not after it
    rep = validate(path, ctx=ctx, recount=recount, tokenizer=tokenizer, recipe=recipe)
    if report is not None:
        atomic_write_json(report, rep.to_dict())
    table = Table(title=f"llqa validate {path}: {rep.items} items")
    for col in ("severity", "check", "count"):
        table.add_column(col)
    for (sev, code), n in sorted(rep.counts.items()):
        table.add_row(sev, code, str(n), style="red" if sev == "error" else "yellow")
    if rep.counts:
        console.print(table)
    for p in rep.problems[:show]:
        where = p.file + (f":{p.line}" if p.line else "") + (f" [{p.field}]" if p.field else "")
        console.print(
            f"[{'red' if p.severity == 'error' else 'yellow'}]{p.severity}[/] {p.code} {escape(where)}: "
            f"{escape(p.message)}",
            highlight=False,
            soft_wrap=True,
        )
    if rep.skipped:
        console.print(f"skipped: {'; '.join(rep.skipped)}", highlight=False)
    verdict = "[green]clean[/]" if rep.ok else "[red]errors[/]"
    console.print(
        f"{verdict}: {rep.errors} errors, {rep.warnings} warnings; checked {', '.join(rep.checked)}", highlight=False
    )
    if not rep.ok:
        raise typer.Exit(1)
