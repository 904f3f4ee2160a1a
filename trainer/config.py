"""The one typed configuration of a training run (`llqa train` / `llqa sft`), checked on creation.

Defaults are the LongLoRA paper's (arXiv 2309.12307, §4.1): AdamW, lr 2e-5, betas (0.9, 0.95), no
weight decay, 20 linear warm-up steps then a constant rate, 1000 steps, global batch 64 (one
sequence per device × gradient accumulation), bf16 on GPU, gradient checkpointing, LoRA r 8 /
alpha 16 on q,k,v,o with embeddings and norms trained (LoRA+), S2-Attn with group = ctx / 4.
The resolved config is written into the run directory as `train_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llqa import rope as R
from llqa.checks import check_range
from llqa.engine import EngineOptions
from llqa.errors import LlqaError
from llqa.models import DEFAULT_MODEL, RopeOptions
from llqa.prompts import TEMPLATES
from trainer.s2attn import BACKENDS as S2_BACKENDS
from trainer.s2attn import s2_length_multiple

TASKS = ("train", "sft")
METHODS = ("longlora", "lora+", "lora", "full")
ATTNS = ("full", "s2")
PARALLEL = ("auto", "ddp", "fsdp")
CONFIG_FILE = "train_config.json"
# Fields that may change between an interrupted run and its `--resume` without changing its result
# ("out": a run directory that was moved or copied, e.g. to another machine, resumes where it now lies).
RESUMABLE_CHANGES = frozenset(
    {
        "out",
        "offload_activations",
        "offload_fraction",
        "sdpa_backend",
        "s2_backend",
        "compile",
        "parallel",
        "max_steps",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "resume",
        "stop_after",
    }
)

# Every numeric field's range: (field, low, low open, high, high open); None = unbounded. Checked on creation,
# with the field's default as the example in the message.
NUMBER_RANGES = (
    ("ctx", 0, True, None, False),
    ("group_ratio", 0, True, 1, False),
    ("lora_r", 0, True, None, False),
    ("lora_alpha", 0, True, None, False),
    ("lora_dropout", 0, False, 1, True),
    ("lr", 0, False, None, False),
    ("beta1", 0, False, 1, True),
    ("beta2", 0, False, 1, True),
    ("weight_decay", 0, False, None, False),
    ("warmup_steps", 0, False, None, False),
    ("max_steps", 0, True, None, False),
    ("batch_size", 0, True, None, False),
    ("micro_batch_size", 0, True, None, False),
    ("context_parallel", 0, True, None, False),
    ("max_grad_norm", 0, False, None, False),
    ("loss_chunk", 0, True, None, False),
    ("offload_fraction", 0, False, 1, False),
    ("save_every", 0, True, None, False),
    ("keep_checkpoints", 0, True, None, False),
    ("log_every", 0, True, None, False),
    ("stop_after", 0, False, None, False),
)


TRAIN_PANEL = "Training (defaults: LongLoRA paper)"


def option(default: Any = MISSING, help: str = "", *, panel: str | None = None, factory=None, kw_only: bool = False):
    """A TrainConfig field with its default and its help written once: the CLI builds `--option` from it
    (`cli.train`), so the library default, the CLI default and the help text cannot drift apart. `panel` groups
    the option in `--help`; a field without a default is a required option."""
    metadata = {"help": help, "panel": panel}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is MISSING:
        return field(kw_only=kw_only, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    task: str = option(help="train: continued pre-training on packed text; sft: instruction -> answer pairs.")
    out: str = option(help="Run directory: final adapter/model, checkpoints, train_config.json, log.jsonl, tb/.")
    model: str = option(DEFAULT_MODEL)  # any --model spec the loader accepts; help: the shared --model alias
    # Required, as on the command line: a run's context is its most important choice, never a silent default.
    ctx: int = option(
        help="Training context in tokens (required). Above the model's context its RoPE is extended by --rope "
        "(default: the checkpoint's method, else Position Interpolation). With S2-Attn it must be a multiple of 8 "
        "(ratio 1/4).",
        kw_only=True,
    )
    # context extension (llqa.rope); help: the shared --rope aliases
    rope: str | None = option(None)  # pi, yarn, theta, llama3; None: the model's own method, else pi
    rope_theta: float | None = option(None)  # explicit rope_theta for rope=theta
    rope_original_ctx: int | None = option(None)  # pretraining context of a linear checkpoint that does not say
    data: list[str] = option(
        help="Text files (one document each), folders (walked for .txt/.md/.tex/.jsonl/.json/.parquet), "
        "jsonl/json/parquet files (one document per record, --text-field). Repeatable.",
        factory=list,
    )
    dataset: str | None = option(None, "Hub dataset id instead of --data.")
    dataset_config: str | None = option(None, "Hub dataset configuration.")
    split: str = option("train", "Hub dataset split.")
    text_field: str = option("text", "Record field holding the text.")
    template: str = option(
        "auto",
        "auto: the model's chat template when it has one, else inst; chat; inst: LongLoRA's "
        "[INST]{instruction}[/INST].",
    )
    method: str = option(
        "longlora",
        "longlora: S2-Attn + LoRA+; lora+: LoRA on q,k,v,o + trained embeddings and norms; lora: LoRA only; full: "
        "every weight.",
    )
    attn: str | None = option(
        None,
        "Training attention: s2 (Shifted Sparse Attention) or full. Default: s2 for longlora, full otherwise. Eval "
        "and generation always use full attention.",
    )
    group_ratio: float = option(0.25, "S2-Attn group size as a fraction of the sequence length.")
    s2_backend: str = option(
        "auto",
        "S2-Attn kernel: auto (flash-attn's varlen kernel when installed; else on CUDA in bf16/fp16 varlen for "
        "small attention calls, e.g. a 135M model up to ~24k tokens, and sdpa for larger ones, see "
        "benchmarks/s2attn.md; sdpa on CPU), sdpa (three causal SDPA calls per layer), varlen (one flash varlen "
        "call per layer for all heads, CUDA bf16/fp16), flash (flash-attn only), sdpa-padded; same result up to "
        "rounding.",
        panel=TRAIN_PANEL,
    )
    lora_r: int = option(8, "LoRA rank.", panel=TRAIN_PANEL)
    lora_alpha: int = option(16, "LoRA alpha.", panel=TRAIN_PANEL)
    lora_dropout: float = option(0.0, "LoRA dropout.", panel=TRAIN_PANEL)
    lr: float = option(2e-5, "AdamW learning rate.", panel=TRAIN_PANEL)
    beta1: float = option(0.9, "AdamW beta1.", panel=TRAIN_PANEL)
    beta2: float = option(0.95, "AdamW beta2.", panel=TRAIN_PANEL)
    weight_decay: float = option(0.0, "AdamW weight decay.", panel=TRAIN_PANEL)
    # step s (0-based) uses lr × min(1, (s+1)/warmup_steps)
    warmup_steps: int = option(20, "Linear warm-up steps, then a constant rate.", panel=TRAIN_PANEL)
    max_steps: int = option(1000, "Optimizer steps.", panel=TRAIN_PANEL)
    batch_size: int = option(
        64, "Global batch in sequences per optimizer step (= micro-batch × gradient accumulation).", panel=TRAIN_PANEL
    )
    micro_batch_size: int = option(1, "Sequences per forward pass.", panel=TRAIN_PANEL)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0: off).", panel=TRAIN_PANEL)
    # the compute dtype; trainable weights stay fp32. Help: the shared --dtype / --device aliases.
    dtype: str = option("auto")
    device: str = option("auto")
    gradient_checkpointing: bool = option(
        True, "Recompute layer activations in backward (saves memory).", panel=TRAIN_PANEL
    )
    loss_chunk: int = option(
        4096,
        "Tokens per chunk of the chunked cross-entropy (no full [tokens × vocab] logits are ever built).",
        panel=TRAIN_PANEL,
    )
    # speed/memory levers that leave the result unchanged (see benchmarks/train_7b.md):
    offload_activations: bool = option(
        False,
        "Keep the gradient checkpoints (each layer's input) in pinned CPU memory instead of GPU memory (copied on "
        "a side CUDA stream, prefetched back in backward); same result.",
        panel=TRAIN_PANEL,
    )
    offload_fraction: float = option(
        1.0,
        "With --offload-activations: offload the checkpoints of only the first this fraction of the decoder layers "
        "(1 = all; e.g. 0.75 keeps the last quarter on the GPU: less CPU traffic, more GPU memory); same result.",
        panel=TRAIN_PANEL,
    )
    sdpa_backend: str = option(
        "auto", "torch SDPA kernel: auto, flash, cudnn, efficient, math; same result up to rounding.", panel=TRAIN_PANEL
    )
    # Off by default: compilation takes a minute or more per run and shape, and SFT's varying lengths recompile.
    compile: str = option(
        "off",
        "torch.compile each decoder layer (regional; compiled once, about a minute, then faster steps): off, auto "
        "(default mode on CUDA, off on CPU), default, max-autotune-no-cudagraphs; same result up to rounding. Works "
        "with --offload-activations and S2-Attn. Best at a fixed --ctx (sft's varying lengths recompile).",
        panel=TRAIN_PANEL,
    )
    parallel: str = option(
        "auto",
        "Engine under torchrun / accelerate launch (ignored in one process): ddp (a whole model per GPU), fsdp "
        "(FSDP2: base and trained weights sharded over the GPUs, for models one GPU cannot hold, e.g. 70B), auto "
        "(ddp unless the model's weights — for --method full also gradients and AdamW state — exceed half a GPU's "
        "memory). Same result; checkpoints resume under either engine and any GPU count.",
        panel=TRAIN_PANEL,
    )
    context_parallel: int = option(
        1,
        "Split each sequence over N processes under torchrun (S2-Attn): every rank holds whole "
        "groups and sends its neighbour half a group of K/V per layer; data parallelism over the processes left "
        "(N must divide them). 1: off. Same loss and gradients as one process.",
        panel=TRAIN_PANEL,
    )
    save_every: int = option(
        100,
        "Checkpoint every N steps, at the end, and when stopped by Ctrl-C or SIGTERM (after the step in flight).",
        panel=TRAIN_PANEL,
    )
    keep_checkpoints: int = option(2, "Newest checkpoints kept.", panel=TRAIN_PANEL)
    log_every: int = option(1, "TensorBoard logging period in steps.", panel=TRAIN_PANEL)
    seed: int = option(42)  # help: the shared --seed alias
    shuffle: bool = option(True, "Shuffle sequences (seeded, per epoch).", panel=TRAIN_PANEL)
    resume: bool = option(
        False,
        "Continue the run in --out from its newest checkpoint (same options; ends with the same weights as an "
        "uninterrupted run).",
    )
    # for tests and time slicing
    stop_after: int | None = option(None, "Stop after this many steps, as if interrupted.")

    def __post_init__(self) -> None:
        self.out = str(self.out)
        self.data = [str(d) for d in self.data]
        if self.task not in TASKS:
            raise LlqaError(f"unknown task '{self.task}'", f"use one of: {', '.join(TASKS)}")
        if self.method not in METHODS:
            raise LlqaError(f"--method {self.method} is not a method", f"use one of: {', '.join(METHODS)}")
        if self.attn is None:
            self.attn = "s2" if self.method == "longlora" else "full"
        if self.attn not in ATTNS:
            raise LlqaError(f"--attn {self.attn} is not an attention", "use full or s2")
        if self.template not in TEMPLATES:
            raise LlqaError(f"--template {self.template} is not a template", "use auto, chat or inst")
        if not self.data and not self.dataset:
            raise LlqaError(f"llqa {self.task} needs data", "pass --data PATH (or --dataset HUB_ID)")
        if self.data and self.dataset:
            raise LlqaError("both --data and --dataset given", "pass one of them")
        for name, low, low_open, high, high_open in NUMBER_RANGES:
            example = {"ctx": 32768}.get(name, getattr(TrainConfig, name, None))  # ctx has no default
            check_range(
                f"--{name.replace('_', '-')}",
                getattr(self, name),
                low=low,
                low_open=low_open,
                high=high,
                high_open=high_open,
                example=None if example is None else f"{example:g}",
            )
        if self.batch_size % self.micro_batch_size:
            raise LlqaError(
                f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size {self.micro_batch_size}",
                "the global batch is micro-batch × gradient accumulation",
            )
        EngineOptions(sdpa_backend=self.sdpa_backend, compile_mode=self.compile, training=True)  # checks both
        if self.parallel not in PARALLEL:
            raise LlqaError(f"--parallel {self.parallel} is not an engine", f"use one of: {', '.join(PARALLEL)}")
        if self.offload_activations and not self.gradient_checkpointing:
            raise LlqaError(
                "--offload-activations moves the gradient checkpoints to CPU memory, but gradient checkpointing is off",
                "drop --no-gradient-checkpointing or --offload-activations",
            )
        if self.s2_backend not in S2_BACKENDS:
            raise LlqaError(
                f"--s2-backend {self.s2_backend} is not an S2-Attn kernel", f"use one of: {', '.join(S2_BACKENDS)}"
            )
        if self.attn == "s2":
            self._check_s2()
        elif self.s2_backend != "auto":
            raise LlqaError(
                f"--s2-backend {self.s2_backend} chooses S2-Attn's kernel, but this run trains with full attention",
                "add --attn s2, or drop --s2-backend",
            )
        if self.context_parallel > 1:
            self._check_context_parallel()
        if self.rope is not None and self.rope not in R.METHODS:
            raise LlqaError(f"--rope {self.rope} is not a method llqa knows", f"use one of: {', '.join(R.METHODS)}")
        R.check_trainable(self.rope)

    @property
    def rope_options(self) -> RopeOptions:
        return RopeOptions(self.rope, self.rope_theta, self.rope_original_ctx)

    def _check_s2(self) -> None:
        """S2-Attn cuts a sequence into groups of N × group_ratio tokens and shifts half the heads by half a
        group, so packed sequences of ctx tokens must be a multiple of `s2_length_multiple` (8 for 1/4).
        SFT items shorter than ctx are padded up to that multiple (the padding is masked)."""
        multiple = s2_length_multiple(self.group_ratio)
        if self.ctx % multiple:
            raise LlqaError(
                f"--ctx {self.ctx} does not suit S2-Attn with --group-ratio {self.group_ratio}: "
                f"the context must be a multiple of {multiple}",
                f"use e.g. --ctx {max(multiple, self.ctx // multiple * multiple)}, or --attn full",
            )

    def _check_context_parallel(self) -> None:
        from trainer.context_parallel import context_parallel_plan

        if self.attn != "s2":
            raise LlqaError(
                "--context-parallel with full attention needs ring attention over the GPUs, not in llqa yet",
                "use --attn s2 (llqa train --method longlora), or drop --context-parallel",
            )
        if self.s2_backend not in ("auto", "sdpa"):
            raise LlqaError(
                f"--context-parallel runs S2-Attn's pieces with SDPA; --s2-backend {self.s2_backend} would be ignored",
                "drop --s2-backend (or use sdpa) with --context-parallel",
            )
        context_parallel_plan(self.ctx, self.context_parallel, self.attn, self.group_ratio)

    @property
    def pad_multiple(self) -> int:
        """Sequence lengths are padded to a multiple of this (S2-Attn's length rule; 1 for full attention; under
        context parallelism N times S2-Attn's, so that every padded batch splits into whole groups per rank)."""
        if self.attn != "s2":
            return 1
        return s2_length_multiple(self.group_ratio) * self.context_parallel

    # ------------------------------------------------------------------ derived values

    @property
    def grad_accum(self) -> int:
        """Micro-batches per optimizer step on one device (single process; data parallelism divides by world size)."""
        return self.batch_size // self.micro_batch_size

    @property
    def lora(self) -> bool:
        return self.method != "full"

    @property
    def train_norms_and_embeddings(self) -> bool:
        """LoRA+ (and LongLoRA, which uses it) trains embeddings and norms besides the LoRA matrices."""
        return self.method in ("longlora", "lora+")

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def read(cls, run_dir: str | Path) -> TrainConfig:
        path = Path(run_dir) / CONFIG_FILE
        try:
            return cls.from_dict(json.loads(path.read_text())["config"])
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise LlqaError(
                f"{path} is missing or unreadable ({e})", "point at an llqa training run directory"
            ) from None

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields that differ from `other` and would change the result of a resumed run."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]
