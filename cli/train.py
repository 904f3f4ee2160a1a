"""`llqa train`, `llqa sft` and `llqa merge`: context extension by fine-tuning, and merging a run."""

from __future__ import annotations

from dataclasses import MISSING, field, fields, make_dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from cli.options import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OutOpt,
    RopeOpt,
    RopeOriginalCtxOpt,
    RopeThetaOpt,
    SeedOpt,
    check_ctx,
    console,
    shared_options,
)
from trainer.config import TrainConfig

app = typer.Typer(rich_markup_mode=None)


SftDataOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        metavar="PATH",
        help="LongAlpaca/LongQA json or jsonl (fields instruction, output; "
        "optional input), or a LongQA build directory (its train.jsonl). Repeatable.",
    ),
]
# TrainConfig's fields as train's and sft's options, in --help order; each command adds its own option after
# --split (train --text-field, sft --template) and sft its own --data help.
_ORDER = (
    *(
        "out",
        "ctx",
        "rope",
        "rope_theta",
        "rope_original_ctx",
        "data",
        "dataset",
        "dataset_config",
        "split",
        "model",
        "method",
        "attn",
        "group_ratio",
        "s2_backend",
    ),
    *("lora_r", "lora_alpha", "lora_dropout", "lr", "beta1", "beta2", "weight_decay", "warmup_steps", "max_steps"),
    *("batch_size", "micro_batch_size", "max_grad_norm", "dtype", "device", "gradient_checkpointing", "loss_chunk"),
    *("save_every", "keep_checkpoints", "log_every", "seed", "shuffle", "resume", "stop_after"),
    *("offload_activations", "offload_fraction", "sdpa_backend", "compile", "parallel", "context_parallel"),
)
_SHARED = {  # help shared by every command
    "model": ModelOpt,
    "dtype": DtypeOpt,
    "device": DeviceOpt,
    "seed": SeedOpt,
    "rope": RopeOpt,
    "rope_theta": RopeThetaOpt,
    "rope_original_ctx": RopeOriginalCtxOpt,
}
_DECLS = {  # option names other than --field-name
    "out": ("--out", "-o"),
    "gradient_checkpointing": ("--gradient-checkpointing/--no-gradient-checkpointing",),
    "shuffle": ("--shuffle/--no-shuffle",),
}
_CLI_TYPES = {"out": Path, "data": list[Path] | None}  # the config stores them as str / list[str]


def config_option(name: str, **overrides) -> Any:
    """The `Annotated[type, typer.Option(...)]` of TrainConfig field `name`: its help from the field's metadata."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    kwargs = {"help": f.metadata["help"], "rich_help_panel": f.metadata["panel"], **overrides}
    if name == "data":
        kwargs["metavar"] = "PATH"
    if name == "stop_after":
        kwargs["hidden"] = True
    decls = _DECLS.get(name, ("--" + name.replace("_", "-"),))
    return Annotated[_CLI_TYPES.get(name, get_type_hints(TrainConfig)[name]), typer.Option(*decls, **kwargs)]


def _train_options() -> type:
    """The frozen dataclass of train's and sft's shared options (see `shared_options`), built from TrainConfig:
    each default and help text is written once, on the config field."""
    spec = []
    for f in (f for name in _ORDER for f in fields(TrainConfig) if f.name == name):
        annotation = _SHARED.get(f.name) or config_option(f.name)
        if f.name == "data":
            spec.append((f.name, annotation, field(default=None)))
        elif f.default is MISSING:
            spec.append((f.name, annotation))
        else:
            spec.append((f.name, annotation, field(default=f.default)))
    return make_dataclass("TrainOptions", spec, frozen=True)


TrainOptions = _train_options()
TextFieldOpt = config_option("text_field")  # train's own option
TemplateOpt = config_option("template")  # sft's own option
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _run_trainer(task: str, opts: TrainOptions, **own) -> None:
    """Shared body of train and sft: the TrainConfig, the run, and one line on how it ended."""
    from trainer.config import TrainConfig
    from trainer.loop import run_training

    check_ctx(opts.ctx)
    options = {f.name: getattr(opts, f.name) for f in fields(opts)}
    options.update(data=list(opts.data or []))
    cfg = TrainConfig(task=task, **options, **own)
    result = run_training(cfg, console=console)
    from trainer.distributed import launched_world

    if launched_world()[0] != 0:  # under torchrun every rank runs this; rank 0 reports
        return
    if result.finished:
        console.print(
            f"[green]done[/]: {result.steps} steps; run in {cfg.out} "
            f"(use it as --model {cfg.out}, or `llqa merge {cfg.out} --out DIR`)"
        )
    else:
        console.print(f"stopped after step {result.steps}; continue with --resume")


@app.command("train")
@shared_options(TrainOptions, own_after="split")
def train_cmd(
    opts: TrainOptions,
    text_field: TextFieldOpt = _DEFAULTS["text_field"],
) -> None:
    """Continued pre-training at --ctx (LongLoRA's fine-tune.py): documents joined with EOS and packed into
    sequences of exactly ctx tokens, every token scored. Loss: mean next-token NLL over the scored tokens of
    each step's global batch (token-weighted across micro-batches), computed in fp32 chunk by chunk."""
    _run_trainer("train", opts, text_field=text_field)


@app.command("sft")
@shared_options(TrainOptions, own_after="split", annotations={"data": SftDataOpt})
def sft_cmd(
    opts: TrainOptions,
    template: TemplateOpt = _DEFAULTS["template"],
) -> None:
    """Supervised fine-tuning at --ctx on instruction/answer pairs; loss on answer tokens only (prompt labels
    -100): mean next-token NLL over the answer tokens of each step's global batch, in fp32, chunk by chunk.
    Items longer than ctx lose the middle of their instruction; items whose answer alone exceeds ctx are
    skipped (both counted in train_config.json)."""
    _run_trainer("sft", opts, template=template)


@app.command("merge")
def merge_cmd(
    run_dir: Annotated[Path, typer.Argument(help="An llqa train/sft run directory.")],
    out: OutOpt,
    dtype: DtypeOpt = "auto",
    device: Annotated[str, typer.Option("--device", help="Where to merge: cpu (default), cuda or cuda:N.")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
) -> None:
    """Merge a run into a standalone Hugging Face model: LoRA merged, trained embeddings and norms in place,
    the RoPE it was trained with in config.json (rope_parameters, and the legacy rope_scaling + rope_theta that
    transformers 4.x and vLLM read), the RoPE record in llqa_model.json, tokenizer saved."""
    from trainer.merge import merge_run

    path = merge_run(run_dir, out, dtype=dtype, device=device, overwrite=overwrite)
    console.print(f"[green]merged[/] into {path} (plain transformers loads it at the trained context)")
