"""`llqa train`, `llqa sft` and `llqa merge`: context extension by fine-tuning, and merging a run."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

from cli.options import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, SeedOpt, check_ctx, console, shared_options
from llqa.models import DEFAULT_MODEL

app = typer.Typer(rich_markup_mode=None)


_TRAIN_PANEL = "Training (defaults: LongLoRA paper)"
SftDataOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--data",
        metavar="PATH",
        help="LongAlpaca/LongQA json or jsonl (fields instruction, output; "
        "optional input), or a LongQA build directory (its train.jsonl). Repeatable.",
    ),
]


@dataclass(frozen=True)
class TrainOptions:
    """The options train and sft share, declared once, in --help order; each command adds its own option after
    --split (--text-field, --template) and sft its own --data help.

    `shared_options` turns the fields into command-line options; the command receives them as one `opts`
    object. The fields are TrainConfig's, with compile_mode for its `compile`.
    """

    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run directory: final adapter/model, checkpoints, train_config.json, log.jsonl, tb/."
        ),
    ]
    ctx: Annotated[
        int,
        typer.Option(
            "--ctx",
            help="Training context in tokens (required). Above the model's native context, Position Interpolation "
            "scales RoPE linearly by ctx/native. With S2-Attn it must be a multiple of 8 (ratio 1/4).",
        ),
    ]
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            help="Text files (one document each), folders (walked for .txt/.md/.tex/.jsonl/.json/.parquet), "
            "jsonl/json/parquet files (one document per record, --text-field). Repeatable.",
            metavar="PATH",
        ),
    ] = None
    dataset: Annotated[str | None, typer.Option("--dataset", help="Hub dataset id instead of --data.")] = None
    dataset_config: Annotated[str | None, typer.Option("--dataset-config", help="Hub dataset configuration.")] = None
    split: Annotated[str, typer.Option("--split", help="Hub dataset split.")] = "train"
    model: ModelOpt = DEFAULT_MODEL
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="longlora: S2-Attn + LoRA+; lora+: LoRA on q,k,v,o + trained embeddings and norms; lora: LoRA "
            "only; full: every weight.",
        ),
    ] = "longlora"
    attn: Annotated[
        str | None,
        typer.Option(
            "--attn",
            help="Training attention: s2 (Shifted Sparse Attention) or full. Default: s2 for longlora, full "
            "otherwise. Eval and generation always use full attention.",
        ),
    ] = None
    group_ratio: Annotated[
        float, typer.Option("--group-ratio", help="S2-Attn group size as a fraction of the sequence length.")
    ] = 0.25
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.", rich_help_panel=_TRAIN_PANEL)] = 8
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", help="LoRA alpha.", rich_help_panel=_TRAIN_PANEL)] = 16
    lora_dropout: Annotated[
        float, typer.Option("--lora-dropout", help="LoRA dropout.", rich_help_panel=_TRAIN_PANEL)
    ] = 0.0
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.", rich_help_panel=_TRAIN_PANEL)] = 2e-5
    beta1: Annotated[float, typer.Option("--beta1", help="AdamW beta1.", rich_help_panel=_TRAIN_PANEL)] = 0.9
    beta2: Annotated[float, typer.Option("--beta2", help="AdamW beta2.", rich_help_panel=_TRAIN_PANEL)] = 0.95
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="AdamW weight decay.", rich_help_panel=_TRAIN_PANEL)
    ] = 0.0
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps", help="Linear warm-up steps, then a constant rate.", rich_help_panel=_TRAIN_PANEL
        ),
    ] = 20
    max_steps: Annotated[int, typer.Option("--max-steps", help="Optimizer steps.", rich_help_panel=_TRAIN_PANEL)] = 1000
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Global batch in sequences per optimizer step (= micro-batch × gradient accumulation).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 64
    micro_batch_size: Annotated[
        int, typer.Option("--micro-batch-size", help="Sequences per forward pass.", rich_help_panel=_TRAIN_PANEL)
    ] = 1
    max_grad_norm: Annotated[
        float, typer.Option("--max-grad-norm", help="Gradient clipping norm (0: off).", rich_help_panel=_TRAIN_PANEL)
    ] = 1.0
    dtype: DtypeOpt = "auto"
    device: DeviceOpt = "auto"
    gradient_checkpointing: Annotated[
        bool,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute layer activations in backward (saves memory).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = True
    loss_chunk: Annotated[
        int,
        typer.Option(
            "--loss-chunk",
            help="Tokens per chunk of the chunked cross-entropy (no full [tokens × vocab] logits are ever built).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 4096
    save_every: Annotated[
        int,
        typer.Option(
            "--save-every",
            help="Checkpoint every N steps, at the end, and when stopped by Ctrl-C or SIGTERM (after "
            "the step in flight).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 100
    keep_checkpoints: Annotated[
        int, typer.Option("--keep-checkpoints", help="Newest checkpoints kept.", rich_help_panel=_TRAIN_PANEL)
    ] = 2
    log_every: Annotated[
        int, typer.Option("--log-every", help="TensorBoard logging period in steps.", rich_help_panel=_TRAIN_PANEL)
    ] = 1
    seed: SeedOpt = 42
    shuffle: Annotated[
        bool,
        typer.Option(
            "--shuffle/--no-shuffle", help="Shuffle sequences (seeded, per epoch).", rich_help_panel=_TRAIN_PANEL
        ),
    ] = True
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its newest checkpoint (same options; ends with the same "
            "weights as an uninterrupted run).",
        ),
    ] = False
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", help="Stop after this many steps, as if interrupted.", hidden=True)
    ] = None
    offload_activations: Annotated[
        bool,
        typer.Option(
            "--offload-activations",
            help="Keep the gradient checkpoints (each layer's input) in pinned CPU memory instead "
            "of GPU memory (copied on a side CUDA stream, prefetched back in backward); same result.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = False
    offload_fraction: Annotated[
        float,
        typer.Option(
            "--offload-fraction",
            help="With --offload-activations: offload the checkpoints of only the first this "
            "fraction of the decoder layers (1 = all; e.g. 0.75 keeps the last quarter on the GPU: less CPU traffic, "
            "more GPU memory); same result.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = 1.0
    sdpa_backend: Annotated[
        str,
        typer.Option(
            "--sdpa-backend",
            help="torch SDPA kernel: auto, flash, cudnn, efficient, math; same result up to rounding.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "auto"
    compile_mode: Annotated[
        str,
        typer.Option(
            "--compile",
            help="torch.compile each decoder layer (regional; compiled once, about a minute, then faster "
            "steps): off, auto (default mode on CUDA, off on CPU), default, max-autotune-no-cudagraphs; same result "
            "up to rounding. Works with --offload-activations and S2-Attn. Best at a fixed --ctx (sft's varying "
            "lengths recompile).",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "off"
    parallel: Annotated[
        str,
        typer.Option(
            "--parallel",
            help="Engine under torchrun / accelerate launch (ignored in one process): ddp (a whole model per "
            "GPU), fsdp (FSDP2: base and trained weights sharded over the GPUs, for models one GPU cannot hold, e.g. "
            "70B), auto (ddp unless the model's weights — for --method full also gradients and AdamW state — "
            "exceed half a GPU's memory). Same result; checkpoints resume under either engine and any GPU count.",
            rich_help_panel=_TRAIN_PANEL,
        ),
    ] = "auto"


def _run_trainer(task: str, opts: TrainOptions, **own) -> None:
    """Shared body of train and sft: the TrainConfig, the run, and one line on how it ended."""
    from trainer.config import TrainConfig
    from trainer.loop import run_training

    check_ctx(opts.ctx)
    options = {f.name: getattr(opts, f.name) for f in fields(opts)}
    options.update(data=list(opts.data or []), compile=options.pop("compile_mode"))
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
    text_field: Annotated[str, typer.Option("--text-field", help="Record field holding the text.")] = "text",
) -> None:
    """Continued pre-training at --ctx (LongLoRA's fine-tune.py): documents joined with EOS and packed into
    sequences of exactly ctx tokens, every token scored. Loss: mean next-token NLL over the scored tokens of
    each step's global batch (token-weighted across micro-batches), computed in fp32 chunk by chunk."""
    _run_trainer("train", opts, text_field=text_field)


@app.command("sft")
@shared_options(TrainOptions, own_after="split", annotations={"data": SftDataOpt})
def sft_cmd(
    opts: TrainOptions,
    template: Annotated[
        str,
        typer.Option(
            "--template",
            help="auto: the model's chat template when it has one, else inst; chat; "
            "inst: LongLoRA's [INST]{instruction}[/INST].",
        ),
    ] = "auto",
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
    RoPE scaling and max_position_embeddings of the trained context in config.json, tokenizer saved."""
    from trainer.merge import merge_run

    path = merge_run(run_dir, out, dtype=dtype, device=device, overwrite=overwrite)
    console.print(f"[green]merged[/] into {path} (plain transformers loads it at the trained context)")
