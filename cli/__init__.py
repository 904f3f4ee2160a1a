"""`llqa`: the command line. Builds the app from one module per command group; nothing else lives here.

Each group module (`cli.models`, `cli.perplexity`, `cli.retrieval`, `cli.longqa`, `cli.train`, `cli.report`)
only parses options and calls into the library packages; shared option aliases are in `cli.options`.
Heavy imports (torch, transformers, datasets) happen inside the commands, so `llqa --help` is instant.
User mistakes arrive as `LlqaError` and leave as one red line with exit code 2; set LLQA_DEBUG=1 to see
the traceback. Usage errors (an unknown option, a value of the wrong type) are one line too.
"""

from __future__ import annotations

import functools
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


# Typer raises click's exceptions (or, from typer 0.22, those of its vendored copy of click): found by name, so
# either works. Usage errors are ClickExceptions; NoArgsIsHelpError is `llqa eval` with nothing after it.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@functools.cache
def _command():
    """The click command typer builds from `app` (once per process: building it reads every signature)."""
    return typer.main.get_command(app)


def _usage_line(e: Exception) -> str:
    """A click usage error (unknown option, bad value, missing option) as one line with where to look."""
    ctx = getattr(e, "ctx", None)
    where = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
    return f"{e.format_message()}{where}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; user errors (llqa's and click's usage errors) leave as one line and exit
    code 2, Ctrl-C as one line and 130. LLQA_DEBUG=1 shows the traceback of llqa's errors."""
    try:
        code = _command().main(args=argv, prog_name="llqa", standalone_mode=False)
    except LlqaError as e:
        if os.environ.get("LLQA_DEBUG"):
            raise
        err_console.print(f"[bold red]{e.label}:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except _CLICK_ERROR as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `llqa`, `llqa eval`: the help is the answer
            print(e.format_message())
        else:
            err_console.print(f"[bold red]error:[/] {_usage_line(e)}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:  # end of input at a prompt
        err_console.print("[bold red]aborted[/]", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's cleanup runs
        code = 130
    if code == 130:  # Ctrl-C: typer turns the KeyboardInterrupt into Exit(130), which arrives here as 130
        if os.environ.get("LLQA_DEBUG"):
            raise KeyboardInterrupt
        err_console.print(
            "[bold red]interrupted[/] (results already written are kept; rerun the same command to resume)",
            highlight=False,
        )
    if isinstance(code, int) and code:
        sys.exit(code)
