"""The one typed configuration of a training run (`llqa train` / `llqa sft`), checked on creation.

Defaults are the LongLoRA paper's (arXiv 2309.12307, §4.1): AdamW, lr 2e-5, betas (0.9, 0.95), no
weight decay, 20 linear warm-up steps then a constant rate, 1000 steps, global batch 64 (one
sequence per device × gradient accumulation), bf16 on GPU, gradient checkpointing, LoRA r 8 /
alpha 16 on q,k,v,o with embeddings and norms trained (LoRA+), S2-Attn with group = ctx / 4.
The resolved config is written into the run directory as `train_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llqa.checks import check_range
from llqa.errors import LlqaError

TASKS = ("train", "sft")
METHODS = ("longlora", "lora+", "lora", "full")
ATTNS = ("full", "s2")
TEMPLATES = ("auto", "chat", "inst")
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
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
    ("max_grad_norm", 0, False, None, False),
    ("loss_chunk", 0, True, None, False),
    ("offload_fraction", 0, False, 1, False),
    ("save_every", 0, True, None, False),
    ("keep_checkpoints", 0, True, None, False),
    ("log_every", 0, True, None, False),
    ("stop_after", 0, False, None, False),
)


@dataclass
class TrainConfig:
    task: str  # "train": continued pre-training on packed text; "sft": instruction -> answer pairs
    out: str  # run directory: adapter/model, checkpoints, logs, config
    model: str = "smollm2-135m"  # any `--model` spec the loader accepts
    ctx: int = 8192  # training context in tokens; Position Interpolation above the model's native context
    data: list[str] = field(default_factory=list)  # local files/folders (train) or jsonl/json/LongQA dir (sft)
    dataset: str | None = None  # hub dataset id (train and sft), instead of --data
    dataset_config: str | None = None  # hub dataset configuration name
    split: str = "train"  # hub dataset split
    text_field: str = "text"  # column holding the document text in jsonl/parquet/hub data (train)
    template: str = "auto"  # sft prompt: auto (chat template if the tokenizer has one), chat, inst
    method: str = "longlora"  # longlora (S2-Attn + LoRA+), lora+, lora, full
    attn: str | None = None  # full or s2; None = s2 for longlora, full otherwise
    group_ratio: float = 0.25  # S2-Attn group size as a fraction of ctx
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lr: float = 2e-5
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup_steps: int = 20  # linear warm-up: step s (0-based) uses lr × min(1, (s+1)/warmup_steps)
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch: sequences per optimizer step
    micro_batch_size: int = 1  # sequences per forward pass on one device
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    dtype: str = "auto"  # compute dtype: auto = bf16 on GPU, fp32 on CPU; trainable weights stay fp32
    device: str = "auto"
    gradient_checkpointing: bool = True
    loss_chunk: int = 4096  # tokens per chunk of the chunked cross-entropy
    # speed/memory levers that leave the result unchanged (see benchmarks/train_7b.md):
    offload_activations: bool = False  # keep the checkpointed layer inputs in (pinned) CPU memory, not on the GPU
    offload_fraction: float = 1.0  # with offload_activations: the first this fraction of the layers offload (1 = all)
    sdpa_backend: str = "auto"  # torch SDPA kernel: auto (torch's choice), flash, cudnn, efficient, math
    # regional torch.compile of the decoder layers (trainer.compile): off, auto (default mode on CUDA, off on
    # CPU), default, max-autotune-no-cudagraphs. Off by default: compilation takes a minute or more per run
    # and shape, and SFT's varying lengths recompile; opt in for long runs at a fixed --ctx.
    compile: str = "off"
    # the engine when several processes train (torchrun / accelerate launch; trainer.distributed): ddp (a full
    # model per GPU), fsdp (FSDP2: every weight sharded over the GPUs), auto (ddp unless the model would take
    # over half of one GPU's memory). Ignored in one process.
    parallel: str = "auto"
    save_every: int = 100  # checkpoint every N optimizer steps (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    log_every: int = 1  # console/TensorBoard logging period in steps
    seed: int = 42
    shuffle: bool = True  # shuffle sequences (each epoch its own seeded order)
    resume: bool = False  # continue from the newest checkpoint in `out`
    stop_after: int | None = None  # stop (as if killed) after this many steps: for tests and time slicing

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
            example = getattr(TrainConfig, name, None)
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
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise LlqaError(
                f"--sdpa-backend {self.sdpa_backend} is not an SDPA backend", f"use one of: {', '.join(SDPA_BACKENDS)}"
            )
        from trainer.compile import check_compile_mode

        check_compile_mode(self.compile)
        if self.parallel not in PARALLEL:
            raise LlqaError(f"--parallel {self.parallel} is not an engine", f"use one of: {', '.join(PARALLEL)}")
        if self.offload_activations and not self.gradient_checkpointing:
            raise LlqaError(
                "--offload-activations moves the gradient checkpoints to CPU memory, but gradient checkpointing is off",
                "drop --no-gradient-checkpointing or --offload-activations",
            )
        if self.attn == "s2":
            self._check_s2()

    def _check_s2(self) -> None:
        """S2-Attn cuts a sequence into groups of N × group_ratio tokens and shifts half the heads by half a
        group, so packed sequences of ctx tokens must be a multiple of `s2_length_multiple` (8 for 1/4).
        SFT items shorter than ctx are padded up to that multiple (the padding is masked)."""
        from trainer.s2attn import s2_length_multiple

        multiple = s2_length_multiple(self.group_ratio)
        if self.ctx % multiple:
            raise LlqaError(
                f"--ctx {self.ctx} does not suit S2-Attn with --group-ratio {self.group_ratio}: "
                f"the context must be a multiple of {multiple}",
                f"use e.g. --ctx {max(multiple, self.ctx // multiple * multiple)}, or --attn full",
            )

    @property
    def pad_multiple(self) -> int:
        """Sequence lengths are padded to a multiple of this (S2-Attn's length rule; 1 for full attention)."""
        if self.attn != "s2":
            return 1
        from trainer.s2attn import s2_length_multiple

        return s2_length_multiple(self.group_ratio)

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
