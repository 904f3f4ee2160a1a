"""Engine settings shared by the evals and the trainer, checked in one place: tokens per forward pass, the
preferred torch SDPA kernel and the torch.compile mode. None of them changes a result beyond kernel rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

from llqa.errors import LlqaError

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
COMPILE_MODES = ("auto", "off", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
# Training leaves CUDA graphs (`reduce-overhead`) out: they keep every activation of the graph alive in a
# static pool, which defeats checkpointing and offloading, and a training step's few big kernels gain nothing.
TRAIN_COMPILE_MODES = tuple(m for m in COMPILE_MODES if m != "reduce-overhead")


def check_sdpa_backend(backend: str) -> None:
    if backend not in SDPA_BACKENDS:
        raise LlqaError(f"--sdpa-backend {backend} is not an SDPA backend", f"use one of: {', '.join(SDPA_BACKENDS)}")


def check_compile_mode(mode: str, training: bool = False) -> None:
    modes = TRAIN_COMPILE_MODES if training else COMPILE_MODES
    if mode not in modes:
        raise LlqaError(f"--compile {mode} is not a compile mode", f"use one of: {', '.join(modes)}")


def resolve_compile_mode(mode: str, device) -> str:
    """`auto`: inductor's default mode on CUDA, where fusing the elementwise ops is worth the one-time
    compilation (H100: 2.2x the naive perplexity loop at 8k instead of 1.5x; benchmarks/perplexity.md), and
    eager elsewhere (inductor on CPU compiles slowly for little gain in the short runs made there)."""
    if mode != "auto":
        return mode
    return "default" if getattr(device, "type", str(device)) == "cuda" else "off"


@dataclass(frozen=True)
class EngineOptions:
    """How a model is run, checked on creation. `batch_tokens` None: each engine's default for the device."""

    batch_tokens: int | None = None
    sdpa_backend: str = "auto"
    compile_mode: str = "auto"
    training: bool = False  # training refuses CUDA graphs (see TRAIN_COMPILE_MODES)

    def __post_init__(self) -> None:
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise LlqaError(f"--batch-tokens must be positive, got {self.batch_tokens}", "e.g. --batch-tokens 65536")
        check_sdpa_backend(self.sdpa_backend)
        check_compile_mode(self.compile_mode, self.training)

    def compile_for(self, device) -> str:
        """The compile mode to use on `device` (`auto` resolved)."""
        return resolve_compile_mode(self.compile_mode, device)
