"""Sharded data parallelism (`--parallel fsdp`): torch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

Every parameter — the frozen base as well as the trainable LoRA matrices and LoRA+ copies — is split
along its first dimension over the ranks, so each GPU holds 1/world of the model (Llama-2-70B in bf16:
130 GB in all, 17 GB per GPU on 8). Each decoder layer is one FSDP unit (its weights are all-gathered
just before the layer runs, forward and recomputation, and freed after it); the root unit is the model
with its loss (`trainer.loss.CausalLMLoss`) and holds the embeddings, the final norm and the LM head,
which the chunked loss reads directly. A tied embedding / LM head (SmolLM2, also the LoRA+ copy that
peft's `ensure_weight_tying` shares between them) is one parameter in the root unit and stays tied.

Precision: with a bf16 compute dtype, parameters are all-gathered in bf16 (the trainable fp32 master
weights are cast for compute, as autocast would) and gradients are reduce-scattered and accumulated in
fp32 into the sharded fp32 master gradients; AdamW (fused on CUDA) updates the local shards.

Gradient accumulation: every micro-batch's backward reduce-scatters its gradients (averaged over ranks,
as DDP does) and adds them to the sharded fp32 gradients, so the step keeps DDP's token-weighted
global-batch semantics (`trainer.distributed`) without keeping a full-size gradient between micro-batches.

Model loading without materialising the model on any GPU (`load_sharded`): every rank builds the model
on the meta device, applies what the run trains (peft) and shards it, then allocates its shards on its
GPU. Their values:
- `random:<shape>`: each rank draws its shards on its GPU (`init_random`); for LoRA methods the base is
  then gathered once into `RUN/base`, as one process saves it, so that the adapter has a base and a resumed
  run (any number of ranks, either engine) reloads exactly that base;
- any other source: rank 0 alone loads the model on its CPU, exactly as one process would (same seed, same
  LoRA initialisation), and scatters it parameter by parameter to the ranks' shards (`fill_from_rank0`).
  CPU memory: the full model once, on rank 0 (130 GB for 70B).

Not supported here (refused by `check_combination`): `--compile` (other than off/auto) and
`--offload-activations`; both work with `--parallel ddp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llqa.engine import resolve_compile_mode
from llqa.errors import LlqaError
from llqa.models import (
    LoadedModel,
    describe,
    extend_context,
    load_config,
    load_model,
    load_tokenizer,
    resolve,
    resolve_device,
)
from trainer.compile import decoder_layers
from trainer.dtensor import full_tensor
from trainer.lora import prepare_trainable
from trainer.loss import CausalLMLoss
from trainer.model import check_attention, prepare_model, training_dtype, weights_spec

if TYPE_CHECKING:
    import torch

    from trainer.config import TrainConfig
    from trainer.distributed import DistInfo


def check_combination(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse what FSDP does not support here, with the fix (one line)."""
    if cfg.compile not in ("off", "auto") and resolve_compile_mode(cfg.compile, device) != "off":
        raise LlqaError(
            f"--compile {cfg.compile} is not supported with --parallel fsdp",
            "use --compile off (or auto, which is off under FSDP), or --parallel ddp",
        )
    if cfg.offload_activations:
        raise LlqaError(
            "--offload-activations is not supported with --parallel fsdp",
            "drop --offload-activations (FSDP already divides the weights by the GPU count), or use --parallel ddp",
        )


def mixed_precision(compute_dtype: torch.dtype):
    """bf16 compute: parameters gathered in bf16, gradients reduced in fp32; fp32 compute: no casts."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if compute_dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)


def shard(step_module: torch.nn.Module, world: int, device: torch.device, compute_dtype: torch.dtype) -> None:
    """fully_shard each decoder layer, then the root (the model with its loss), over all ranks, in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = mixed_precision(compute_dtype)
    for layer in decoder_layers(step_module.model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(step_module, mesh=mesh, mp_policy=policy)


def fill_from_rank0(model: torch.nn.Module, source: torch.nn.Module | None, device: torch.device) -> None:
    """Copy every parameter of `source` (rank 0's full model on the CPU; None on the other ranks) into the sharded
    `model` of the same structure: each full parameter is scattered from rank 0 into the ranks' shards, one at a
    time (so at most one full parameter is on a GPU at once). Buffers (RoPE tables) are computed on every rank."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = dict(source.named_parameters()) if source is not None else {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if source is not None and name not in full:
                raise LlqaError(f"FSDP loading: parameter {name} missing on rank 0", "report this as a bug")
            if source is not None:
                t = full[name].detach().to(device=device, dtype=param.dtype)
            else:  # only rank 0's data is read; the others pass a buffer of the full shape
                t = torch.empty(param.shape, dtype=param.dtype, device=device)
            if isinstance(param, DTensor):  # scatter from rank 0 (src_data_rank=0: only rank 0's data counts)
                param.copy_(distribute_tensor(t, param.device_mesh, param.placements))
            else:
                dist.broadcast(t, src=0)
                param.copy_(t)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def base_name(name: str) -> str | None:
    """The base model's name of a parameter of the peft-wrapped model (None for LoRA matrices and LoRA+ copies,
    which the base does not have): `base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight` ->
    `model.layers.0.self_attn.q_proj.weight`."""
    if ".lora_" in name or ".modules_to_save." in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def init_random(model: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    """Random weights for a `random:<shape>` Llama, written straight into this rank's shards (no full copy
    anywhere): matrices N(0, std) as transformers initialises them, norms 1, LoRA A as peft (kaiming-uniform,
    bound 1/sqrt(fan_in)), LoRA B 0, and each LoRA+ copy equal to the weight it copies."""
    import math

    import torch
    from torch.distributed.tensor import DTensor

    named = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, p in named.items():
            local = p.to_local() if isinstance(p, DTensor) else p
            if ".modules_to_save." in name:
                continue
            if ".lora_B." in name:
                local.zero_()
            elif ".lora_A." in name:
                bound = 1 / math.sqrt(p.shape[1])
                local.uniform_(-bound, bound, generator=generator)
            elif p.dim() == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, std, generator=generator)
        for name, p in named.items():
            if ".modules_to_save." in name:
                original = named[name.replace(".modules_to_save.default.", ".original_module.")]
                p.copy_(original)


def save_base_copy(model: torch.nn.Module, config, tokenizer, base_dir, main: bool) -> None:
    """The frozen base of a sharded peft model as a Hugging Face model directory (what `save_random_base` writes
    in one process): gathered parameter by parameter on rank 0's CPU, written in 5 GB safetensors shards."""
    from huggingface_hub import save_torch_state_dict

    state = {}
    for name, p in model.named_parameters():
        target = base_name(name)
        if target is not None:
            full = full_tensor(p.detach())
            if main:
                state[target] = full.cpu()
    if main:  # config.json last: a copy without it is incomplete and gets rewritten
        base_dir.mkdir(parents=True, exist_ok=True)
        save_torch_state_dict(state, base_dir)
        tokenizer.save_pretrained(base_dir)
        config.save_pretrained(base_dir)


def _build_sharded(
    cfg: TrainConfig, config, dtype: torch.dtype, compute_dtype: torch.dtype, dist: DistInfo, device: torch.device
):
    """(prepared model, step module) sharded and allocated on `device`, parameters not yet written."""
    import dataclasses

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):  # parameters on meta; RoPE tables computed on the CPU
        meta = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    meta.tie_weights()  # init_empty_weights gives every parameter a new meta tensor, untying a tied LM head
    model = prepare_model(dataclasses.replace(cfg, compile="off"), meta, compute_dtype)
    step_module = CausalLMLoss(model, cfg.loss_chunk)
    shard(step_module, dist.world, device, compute_dtype)
    buffers = {n: b.clone() for n, b in step_module.named_buffers()}
    step_module.to_empty(device=device)  # allocates the shards (and wipes the buffers, restored here)
    with torch.no_grad():
        for n, b in step_module.named_buffers():
            b.copy_(buffers[n])
    return model, step_module


def load_sharded(cfg: TrainConfig, dist: DistInfo):
    """(loaded, device, compute dtype, prepared model, step module): the run's model built on the meta device,
    prepared for `cfg.method` (peft), sharded over the ranks and allocated on this rank's device; then
    - `random:<shape>`: every rank draws its own shards (`init_random`); for LoRA methods the base is then
      gathered once into `RUN/base` (as in one process), so the adapter has a base to load onto and `--resume`
      reloads that exact base on any number of ranks;
    - any other source (a `--resume` of a random base included): rank 0 loads the model on its CPU as one
      process would (same seed, same LoRA initialisation) and scatters it (`fill_from_rank0`), then frees it.
    `loaded.model` is None: the model is the returned sharded one."""
    import torch

    device = resolve_device(cfg.device)
    compute_dtype = getattr(torch, training_dtype(cfg, device))
    check_combination(cfg, device)
    check_attention(cfg, device, compute_dtype)
    spec = weights_spec(cfg)
    base_dtype = "float32" if cfg.method == "full" else str(compute_dtype).removeprefix("torch.")
    source = resolve(spec)
    tokenizer = load_tokenizer(source)
    config, _, rope = extend_context(load_config(source, tokenizer), cfg.ctx, cfg.rope_options, source)
    torch.manual_seed(cfg.seed)
    model, step_module = _build_sharded(cfg, config, getattr(torch, base_dtype), compute_dtype, dist, device)
    if source.kind == "random":
        generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + dist.rank)  # each rank its own shards
        init_random(model, config.initializer_range, generator)
        base_dir = cfg.run_dir / "base"
        if cfg.lora and not (base_dir / "config.json").is_file():
            save_base_copy(model, config, tokenizer, base_dir, dist.main)
    else:
        full = None
        if dist.main:
            torch.manual_seed(cfg.seed)  # as in one process: the same LoRA initialisation
            loaded = load_model(spec, ctx=cfg.ctx, dtype=base_dtype, device="cpu", rope=cfg.rope_options)
            full = prepare_trainable(loaded.model, cfg.method, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
            del loaded
        fill_from_rank0(model, full, device)
        del full
    info = describe(spec, cfg.ctx, base_dtype, str(device), cfg.rope_options)
    return LoadedModel(None, tokenizer, info, source, rope), device, compute_dtype, model, step_module
