"""`llqa`: the command line. Builds the app from one module per command group; nothing else lives here.

Each group module (`cli.models`, `cli.perplexity`, `cli.retrieval`, `cli.longqa`, `cli.train`, `cli.report`)
only parses options and calls into the library packages; shared option aliases are in `cli.options`.
Heavy imports (torch, transformers, datasets) happen inside the commands, so `llqa --help` is instant.
User mistakes arrive as `LlqaError` and leave as one red line with exit code 2; set LLQA_DEBUG=1 to see
the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from cli import longqa, models, perplexity, report, retrieval, train
from cli.options import err_console
from llqa.errors import LlqaError

app = typer.Typer(
    name="llqa",
    help="Long-context LMs in one tool: build LongQA, score long-context perplexity and retrieval, "
    "and extend a model's context with Position Interpolation, S2-Attn and LoRA+.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts quote prompt formats like [INST]...[/INST]: print them literally
)
eval_app = typer.Typer(
    help="Score a model: perplexity and retrieval evals.", no_args_is_help=True, rich_markup_mode=None
)
# A group added without a name contributes its commands at this level, in this order (the --help order).
for group in (models, longqa, train, report):
    app.add_typer(group.app)
app.add_typer(eval_app, name="eval")
for group in (perplexity, retrieval):
    eval_app.add_typer(group.app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, turning user errors into one line and exit code 2.

    Typer/click handle usage errors themselves (standalone mode: message + exit 2)."""
    try:
        app(args=argv)
    except LlqaError as e:
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(f"[bold red]{e.label}:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside training (which stops cleanly, trainer.stop), or twice in it
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(
            "[bold red]interrupted[/] (results already written are kept; evals and training resume)", highlight=False
        )
        sys.exit(130)
