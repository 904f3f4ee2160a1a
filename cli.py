"""`llqa`: the command line. Option parsing and calls into the library packages, nothing else.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `llqa --help` is instant.
User mistakes arrive as `LlqaError` and leave as one red line with exit code 2; set LLQA_DEBUG=1 to
see the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llqa.errors import LlqaError
from llqa.models import DEFAULT_MODEL

app = typer.Typer(
    name="llqa",
    help="Long-context LMs in one tool: build LongQA, score long-context perplexity and retrieval, "
    "and extend a model's context with Position Interpolation, S2-Attn and LoRA+.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Score a model: perplexity and retrieval evals.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

console = Console()
err_console = Console(stderr=True)

# ----------------------------------------------------------------------------- shared options

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m",
    help="Alias (smollm2-135m, 7b, 13b, 70b; see `llqa models`), random:<shape>, a hub id, "
    "or a local model / adapter / llqa run directory.")]
CtxOpt = Annotated[int | None, typer.Option(
    "--ctx", help="Target context in tokens. Above the model's native context, Position Interpolation "
    "applies linear RoPE scaling by ctx/native, multiplied with any scaling the checkpoint carries.")]
DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (every sampled choice derives from it).")]


def _check_ctx(ctx: int | None) -> None:
    if ctx is not None and ctx <= 0:
        raise LlqaError(f"--ctx must be a positive number of tokens, got {ctx}", "e.g. --ctx 32768")


# ----------------------------------------------------------------------------- models / info


@app.command("models")
def models_cmd() -> None:
    """List the model aliases: native context, parameters, where each comes from."""
    from llqa.models import ALIASES, RANDOM_SHAPES

    table = Table(title="llqa model aliases")
    for col in ("alias", "hub id", "native ctx", "params", "source"):
        table.add_column(col)
    for a in ALIASES.values():
        table.add_row(a.name, a.hub_id, str(a.native_ctx), a.params, a.about)
    console.print(table)
    console.print(f"Random-weight shapes for speed/memory work: "
                  f"{', '.join('random:' + s for s in RANDOM_SHAPES)}. "
                  "Any hub id or local directory is accepted too.")


@app.command("info")
def info_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    ctx: CtxOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a model's resolved configuration at --ctx (no weights are loaded)."""
    import json

    from llqa.models import describe

    _check_ctx(ctx)
    info = describe(model, ctx=ctx, dtype=dtype, device=device)
    if json_out:
        console.print_json(json.dumps(info.to_dict()))
        return
    table = Table(title=f"llqa info: {model}", show_header=False)
    rows = [
        ("source", info.source), ("architecture", info.architecture), ("layers", str(info.layers)),
        ("heads / KV heads", f"{info.heads} / {info.kv_heads}"), ("hidden", str(info.hidden)),
        ("vocab", str(info.vocab)), ("native context", str(info.native_ctx)),
        ("target context", str(info.target_ctx)),
        ("RoPE scaling factor", f"{info.rope_factor:g} (checkpoint {info.checkpoint_rope_factor:g})"),
        ("dtype", info.dtype), ("device", info.device), ("parameters", f"{info.params:,}"),
    ]
    if info.adapter:
        rows.append(("adapter", info.adapter))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


# ----------------------------------------------------------------------------- eval: perplexity (issue 3)

# ----------------------------------------------------------------------------- eval: retrieval (issue 4)

# ----------------------------------------------------------------------------- build / validate (issue 5)


def _recipe_help() -> str:
    from longqa.recipe import available_recipes

    return ("A shipped recipe (" + ", ".join(available_recipes()) + ") or a path to a recipe .toml file "
            "(quotas per doc_type/category, token bounds, max questions per document, split, framing, sources).")


@app.command("build")
def build_cmd(
    out: OutOpt,
    recipe: Annotated[str, typer.Option("--recipe", help=_recipe_help())] = "longqa-3k",
    source_dir: Annotated[Path | None, typer.Option(
        "--source-dir", help="Local copies of the sources, one folder per source: DIR/narrativeqa, DIR/qasper, "
        "DIR/arxiv, DIR/leval, DIR/longalpaca (layouts in the README). Sources without one load from the hub.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the split and of every sampled choice "
                                             "(default: the recipe's).")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Tokenizer counting n_tokens = tokens(instruction) + tokens(output), no special "
        "tokens (any --model value; default: the recipe's, smollm2-135m).")] = None,
    allow_short: Annotated[bool, typer.Option(
        "--allow-short", help="Write the set even when a quota cell cannot be filled (never padded).")] = False,
) -> None:
    """Build LongQA: human questions and answers over whole papers and novels, framed as LongQA frames them,
    into --out (train/test jsonl + parquet, manifest.json with checksums, a dataset card). Same inputs and
    seed give byte-identical files; a failed or killed build leaves no half-written directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from longqa.build import build
    from longqa.recipe import load_recipe

    rec = load_recipe(recipe)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bar:
        def progress(name: str, total: int | None):
            task = bar.add_task(name, total=total)
            return lambda n: bar.advance(task, n)

        result = build(rec, out, source_dir=source_dir, seed=seed, tokenizer=tokenizer, allow_short=allow_short,
                       progress=progress)
    table = Table(title=f"LongQA {rec.name} -> {result.out}")
    for col in ("cell", "quota", "built", "candidates"):
        table.add_column(col)
    for cell, v in result.manifest["cells"].items():
        style = "red" if v["built"] < v["quota"] else None
        table.add_row(cell, str(v["quota"]), str(v["built"]), str(v["candidates"]), style=style)
    console.print(table)
    c = result.counts
    console.print(f"{c['total']} items ({c['by_split'].get('train', 0)} train, {c['by_split'].get('test', 0)} test) "
                  f"over {c['documents']} documents; sources {c['by_source']}")
    for s in result.shortfalls:
        err_console.print(f"[yellow]short:[/] {s}", highlight=False)


@app.command("validate")
def validate_cmd(
    path: Annotated[Path, typer.Argument(help="A directory written by `llqa build`, or one .jsonl file.")],
    ctx: CtxOpt = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the full JSON report here.")] = None,
    recount: Annotated[bool, typer.Option(
        "--recount/--no-recount", help="Recount n_tokens with the manifest's tokenizer (fast tokenizer only, "
        "no torch).")] = True,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="Tokenizer for the recount when there is no manifest (a lone .jsonl).")] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help="Recipe whose framing to check when there is no manifest.")] = None,
    show: Annotated[int, typer.Option("--show", help="Problems listed on screen.")] = 20,
) -> None:
    """Check a LongQA build: schema and types, categories, empty fields, token counts (recounted; --ctx
    bound), duplicate and near-duplicate questions and documents, answers given away by the question,
    extractive answers absent from the document, a document in both splits, quotas, framing, control
    characters and mojibake, manifest checksums. Exit 0 when clean, 1 with errors (warnings don't fail)."""
    from rich.markup import escape

    from llqa.io import atomic_write_json
    from longqa.validate import validate

    _check_ctx(ctx)
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
        console.print(f"[{'red' if p.severity == 'error' else 'yellow'}]{p.severity}[/] {p.code} {escape(where)}: "
                      f"{escape(p.message)}", highlight=False, soft_wrap=True)
    if rep.skipped:
        console.print(f"skipped: {'; '.join(rep.skipped)}", highlight=False)
    verdict = "[green]clean[/]" if rep.ok else "[red]errors[/]"
    console.print(f"{verdict}: {rep.errors} errors, {rep.warnings} warnings; checked {', '.join(rep.checked)}",
                  highlight=False)
    if not rep.ok:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- train / sft / merge (issue 6)

# ----------------------------------------------------------------------------- report (issue 8)


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning user errors into one line and exit code 2.

    Typer/click handle usage errors themselves (standalone mode: message + exit 2)."""
    try:
        app(args=argv)
    except LlqaError as e:
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
