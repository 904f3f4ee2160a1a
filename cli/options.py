"""What every command group shares: the consoles, option aliases, list parsers and `shared_options`.

Typer reads options from signatures, so each alias is an `Annotated[type, typer.Option(...)]` declared once
here and used by every command taking that option.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, get_type_hints

import typer
from rich.console import Console

from llqa.errors import LlqaError
from llqa.io import OutLock
from llqa.models import MAX_CTX
from llqa.ranks import dist_env

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Alias (smollm2-135m, 7b, 13b, 70b; see `llqa models`), random:<shape>, a hub id, "
        "or a local model / adapter / llqa run directory.",
    ),
]
CtxOpt = Annotated[
    int | None,
    typer.Option(
        "--ctx",
        help="Target context in tokens. Above the context the model serves, its RoPE is extended by --rope, "
        "re-derived from the model's original context (a PI ×4 checkpoint taken twice as far ends at ×8). "
        "An llqa run loads at the RoPE it was trained with.",
    ),
]
RopeOpt = Annotated[
    str | None,
    typer.Option(
        "--rope",
        help="Context extension method above the model's context: pi (Position Interpolation, linear), yarn "
        "(YaRN), dynamic (dynamic NTK, inference only), theta (raise rope_theta by s^(d/(d-2)), s = ctx/original, "
        "or to --rope-theta), llama3. Default: the method the checkpoint carries, else pi. Another method than "
        "the checkpoint's is refused.",
    ),
]
RopeThetaOpt = Annotated[
    float | None, typer.Option("--rope-theta", help="With --rope theta: set rope_theta to this instead of the rule.")
]
RopeOriginalCtxOpt = Annotated[
    int | None,
    typer.Option(
        "--rope-original-ctx",
        help="The context the model was pretrained at, where its config does not say (linear checkpoints such "
        "as LongLoRA's keep 4096 beside ×8; Qwen3 serves 40,960 positions, pretrained at 32,768).",
    ),
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (every sampled choice derives from it).")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Discard finished cells in --out and start afresh (default: resume).")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")]


@dataclass(frozen=True)
class RopeCliOptions:
    """The context extension options of every command that takes --ctx (see `shared_options`); an options
    class of a command group lists the same three fields and passes itself to `rope_options`."""

    rope: RopeOpt = None
    rope_theta: RopeThetaOpt = None
    rope_original_ctx: RopeOriginalCtxOpt = None


def rope_options(opts):
    """The `llqa.models.RopeOptions` of an options object with the fields of `RopeCliOptions`."""
    from llqa.models import RopeOptions

    return RopeOptions(opts.rope, opts.rope_theta, opts.rope_original_ctx)


def locks_out(command):
    """Hold a lock on an eval's --out (`opts.out`) while the command runs: a second run into it is refused with the
    holder's PID instead of computing every cell twice. Under torchrun each rank locks the folder it writes
    (rank 0 --out, rank r --out/rank{r}). The lock also checks --out: a file or an unwritable place is one line."""

    @functools.wraps(command)
    def wrapper(*args, opts, **kwargs):
        rank = dist_env()[0]
        with OutLock(opts.out if rank == 0 else opts.out / f"rank{rank}"):
            return command(*args, opts=opts, **kwargs)

    return wrapper


def check_ctx(ctx: int | None) -> None:
    """Every command's --ctx passes here (the option is parsed by Typer as an int)."""
    if ctx is not None and not 1 <= ctx <= MAX_CTX:
        raise LlqaError(
            f"--ctx must be between 1 and {MAX_CTX:,} tokens, got {ctx:,}",
            "e.g. --ctx 32768 (longer positions are not exact in the fp32 RoPE tables)",
        )


def shared_options(
    options_class,
    *,
    own_after: str | None = None,
    omit: tuple[str, ...] = (),
    defaults: dict | None = None,
    annotations: dict | None = None,
):
    """Add a frozen dataclass's fields (less `omit`) to a command's options and pass them as one `opts` object.

    Typer reads a command's options from its signature, so the wrapper carries the combined one, in --help
    order: the command's own parameters first, or right after the field `own_after`. For this command only,
    `defaults` replaces a field's default and `annotations` its `Annotated[type, typer.Option(...)]` (e.g. its
    help text). The fields' annotations are such `Annotated` types; a field without a default is a required option.
    """
    hints = get_type_hints(options_class, include_extras=True)
    defaults, annotations = defaults or {}, annotations or {}
    shared = []
    for f in fields(options_class):
        if f.name in omit:
            continue
        default = inspect.Parameter.empty if f.default is MISSING else f.default
        shared.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults.get(f.name, default),
                annotation=annotations.get(f.name, hints[f.name]),
            )
        )
    split = 0 if own_after is None else 1 + [p.name for p in shared].index(own_after)

    def decorate(command):
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)  # keyword-only, as they may follow shared ones
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "opts"
        ]
        params = shared[:split] + own + shared[split:]

        @functools.wraps(command)
        def wrapper(**options):
            opts = options_class(**{p.name: options.pop(p.name) for p in shared})
            return command(opts=opts, **options)

        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def number_list(value: str | None, option: str, example: str, kind: type = int) -> list | None:
    """The comma-separated numbers of a list option (`kind` int or float); None when the option is absent."""
    if value is None:
        return None
    try:
        return [kind(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise LlqaError(
            f"{option} {value} is not a comma-separated list of {what}", f"e.g. {option} {example}"
        ) from None


def int_list(value: str | None, option: str, example: str) -> list[int] | None:
    return number_list(value, option, example, int)


def float_list(value: str | None, option: str, example: str) -> list[float] | None:
    return number_list(value, option, example, float)
