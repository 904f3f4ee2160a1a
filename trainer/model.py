"""The model a run trains: load the base, prepare it for the method, the optimizer and its schedule.

Public so every engine builds the model the same way: the one-process path (`trainer.loop`), the sharded path
(`trainer.fsdp`) and the benchmarks call these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llqa.engine import resolve_compile_mode
from llqa.errors import LlqaError
from llqa.models import load_model, resolve, resolve_device, resolve_dtype
from trainer.compile import compile_layers
from trainer.config import TrainConfig
from trainer.lora import prepare_trainable
from trainer.s2attn import check_backend, enable_s2_attention

if TYPE_CHECKING:
    import torch


def training_dtype(cfg: TrainConfig, device: torch.device) -> str:
    dtype = resolve_dtype(cfg.dtype, device)
    name = str(dtype).removeprefix("torch.")
    if name == "float16":
        raise LlqaError(
            "--dtype float16 is not supported for training (its range overflows without loss scaling)",
            "use --dtype bfloat16 (GPU) or float32",
        )
    return name


def load_base(cfg: TrainConfig):
    """(loaded model, device, compute dtype). LoRA methods keep the frozen base in the compute dtype (bf16 on
    GPU, as in the paper); `full` loads it in fp32, since every weight becomes an fp32 master weight."""
    import torch

    source = resolve(cfg.model)
    if source.kind == "peft":
        raise LlqaError(
            f"--model {cfg.model} is a LoRA adapter",
            "merge it first (`llqa merge RUN --out DIR`) and train on the merged model",
        )
    device = resolve_device(cfg.device)
    dtype = training_dtype(cfg, device)
    check_attention(cfg, device, getattr(torch, dtype))
    torch.manual_seed(cfg.seed)  # random:<shape> bases and LoRA init derive from the seed
    loaded = load_model(
        weights_spec(cfg),
        ctx=cfg.ctx,
        dtype="float32" if cfg.method == "full" else dtype,
        device=str(device),
        rope=cfg.rope_options,
    )
    return loaded, device, getattr(torch, dtype)


def check_attention(cfg: TrainConfig, device, compute_dtype) -> None:
    """Before any model is loaded: an S2-Attn kernel that cannot run on this device and compute dtype is
    refused with one line (`--s2-backend varlen` on a CPU), instead of at the first training step."""
    if cfg.attn == "s2":
        check_backend(cfg.s2_backend, device, compute_dtype)


def weights_spec(cfg: TrainConfig) -> str:
    """What to load: `--model`, except that a resumed LoRA run on a random base reloads the copy of that base
    kept in the run directory (whatever engine, device or number of processes created it)."""
    base = cfg.run_dir / "base"
    if cfg.resume and cfg.lora and resolve(cfg.model).kind == "random" and (base / "config.json").is_file():
        return str(base)
    return cfg.model


def prepare_model(cfg: TrainConfig, model, compute_dtype: torch.dtype | None = None):
    """Train mode, no KV cache, S2-Attn if asked, gradient checkpointing, the method's trainable set.
    `compute_dtype` (default: the model's dtype) is the autocast dtype the training step will use."""
    import torch

    model.config.use_cache = False
    if cfg.attn == "s2":
        enable_s2_attention(model, group_ratio=cfg.group_ratio, backend=cfg.s2_backend)
    if cfg.gradient_checkpointing:
        # Offloading needs the reentrant form: it saves each layer's input with save_for_backward, where the
        # hooks of `trainer.offload` move it to CPU; the non-reentrant form keeps it on the GPU (its own hooks win).
        kwargs = {"use_reentrant": cfg.offload_activations}
        # transformers >= 5.2x renamed it activation_checkpointing_enable; older 5.x only has the old name
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if cfg.offload_activations:  # reentrant checkpoints only backpropagate into inputs that require grad
            model.enable_input_require_grads()
    compute_dtype = compute_dtype or model.dtype
    model = prepare_trainable(model, cfg.method, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    if compute_dtype != torch.float32:
        # Trainable embeddings are fp32 master weights, so their output would be fp32 and with it the whole
        # residual stream and every checkpointed activation (2x the memory of a bf16 model: +2.3 GB for
        # SmolLM2 at 64k). Cast it to the compute dtype, as a bf16 model's embedding output is.
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.to(compute_dtype))
    model.train()
    compile_model(cfg, model)
    return model


def compile_model(cfg: TrainConfig, model) -> None:
    """`--compile`: the decoder layers compiled in place, after LoRA is applied (see `trainer.compile`)."""
    mode = resolve_compile_mode(cfg.compile, next(model.parameters()).device)
    if mode != "off":
        compile_layers(model, mode)


def compile_fallback_note(cfg: TrainConfig, device) -> str | None:
    """After the first step of a `--compile` run: one line when no layer was actually compiled."""
    from llqa.compile import fallback_reason

    if resolve_compile_mode(cfg.compile, device) == "off":
        return None
    reason = fallback_reason()
    if reason is None:
        return None
    return (
        f"--compile: the decoder layers ran eagerly, torch.compile fell back ({reason}); the steps are "
        "correct but not compiled. Pass --compile off to silence this, or report it with your torch and "
        "transformers versions"
    )


def make_optimizer(cfg: TrainConfig, model):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.is_cuda for p in params) or None
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps))
    return params, opt, sched


def lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up then constant: step s (0-based) uses lr × min(1, (s+1)/warmup)."""
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def base_spec(cfg: TrainConfig, loaded) -> str:
    """The spec that reloads this run's base: local paths made absolute, a random base the copy inside the run,
    as a path relative to the run (`./base`), so a moved or copied run uses its own copy."""
    if cfg.lora and (loaded.source.kind == "random" or cfg.model.startswith("random:")):
        return "./base"
    path = Path(loaded.source.spec).expanduser()
    return str(path.resolve()) if path.exists() else loaded.source.spec


def adapter_base_name(cfg: TrainConfig) -> str:
    """The adapter's `base_model_name_or_path`: what the base is on any machine — the alias (`smollm2-135m`),
    the `random:<shape>` spec, the hub id — and only for a local model its absolute path (all there is)."""
    path = Path(cfg.model).expanduser()
    if not cfg.model.startswith("random:") and path.exists():
        return str(path.resolve())
    return cfg.model  # an alias (whatever file or cache it resolves to here), random:<shape> or a hub id


def save_random_base(cfg: TrainConfig, loaded) -> None:
    """A random-weight base cannot be recreated later: keep a copy so the adapter reloads onto the same weights."""
    if loaded.source.kind == "random" and cfg.lora:
        base_dir = cfg.run_dir / "base"
        if not (base_dir / "config.json").is_file():
            loaded.model.save_pretrained(base_dir)
            loaded.tokenizer.save_pretrained(base_dir)
