"""The training loop of `llqa train` / `llqa sft`: compact and explicit (no HF Trainer).

One optimizer step = `grad_accum` micro-batches of `micro_batch_size` sequences. The step's loss is
the mean next-token NLL over all scored tokens of the global batch (token-weighted: each micro-batch
contributes its NLL sum / the step's scored-token count), computed by the chunked cross-entropy of
`trainer.loss`. Trainable weights are fp32 master weights; the frozen base keeps the compute dtype
(bf16 on GPU) and forward/backward run under autocast. The device comes from the loader (LOCAL_RANK
aware), so a data-parallel wrapper can be added around `model` without changing the step.

Run directory (`--out`):
- `train_config.json`   resolved config, model info, data statistics, what is trained
- `llqa_model.json`     base model spec, trained ctx and RoPE (method, parameters, original), so `--model RUN_DIR`
  loads at exactly the RoPE it was trained with
- `adapter_config.json`, `adapter_model.safetensors` (LoRA methods) or `config.json`,
  `model.safetensors` (full): the final weights, with the tokenizer
- `checkpoints/step-N/` atomic checkpoints (see `trainer.checkpoint`), every `--save-every` steps and when the
  run is stopped by SIGINT/SIGTERM (after the step in flight; see `trainer.stop`); `data/` packed sequences
- `log.jsonl`           one record per step (a resumed run appends; take the last record of a step)
- `tb/`                 TensorBoard event files (loss, lr, tokens/s, peak memory, grad norm)
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llqa.errors import LlqaError
from llqa.io import OutLock, append_jsonl, atomic_write_json
from llqa.models import RUN_FILE, add_legacy_rope_keys, resolve_device, unwrapped
from trainer import data as D
from trainer.checkpoint import check_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import CONFIG_FILE, TrainConfig
from trainer.context_parallel import ContextParallelGroup, context_parallel_plan, shard_batch, sharded_s2
from trainer.data import collate, sample_index
from trainer.distributed import (
    DistInfo,
    all_reduce,
    barrier,
    choose_engine,
    init_distributed,
    launched_world,
    micro_batches_per_rank,
    rank_slice,
    shutdown,
    wrap_for_training,
)
from trainer.dtensor import clip_grad_norm, trainable_state
from trainer.fsdp import load_sharded
from trainer.loss import CausalLMLoss
from trainer.model import (
    adapter_base_name,
    base_spec,
    compile_fallback_note,
    load_base,
    make_optimizer,
    prepare_model,
    save_random_base,
)
from trainer.offload import checkpoint_offload
from trainer.runlog import LOG_FILE
from trainer.s2attn import disable_s2_attention
from trainer.stop import StopRequest, TrainingInterrupted

if TYPE_CHECKING:
    import torch

SEMANTICS = (
    "loss: mean next-token NLL (natural log) over the scored tokens of each optimizer step's global "
    "batch; train: every token of the packed sequences is scored; sft: answer tokens only "
    "(prompt labels are -100)."
)


class TrainingStopped(LlqaError):
    """Raised when the loss or gradient is not finite: the run stops, the last good checkpoint stays."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # per step run in this process
    data: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # reached max_steps and wrote the final weights
    model: Any = None  # the trained model (set when finished)


# --------------------------------------------------------------------------- setup


def _check_run_dir(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from, after refusing to mix two runs in one directory and a --max-steps the
    run has already passed."""
    run = cfg.run_dir
    saved = run / CONFIG_FILE
    if not cfg.resume:
        if saved.exists() or latest_checkpoint(run) is not None:
            raise LlqaError(f"{run} already holds a training run", "pass --resume to continue it, or another --out")
        return None
    if not saved.exists():
        raise LlqaError(
            f"--resume: {run} holds no training run ({CONFIG_FILE} missing)", "drop --resume to start a new run there"
        )
    diff = TrainConfig.read(run).differences(cfg)
    if diff:
        raise LlqaError(
            f"--resume: the options differ from the run in {run}: {', '.join(diff)}",
            "resume with the same options (only --max-steps, --save-every, --log-every, "
            "--keep-checkpoints, --out, --offload-activations, --sdpa-backend, --compile and the number "
            "of GPUs may change)",
        )
    checkpoint = latest_checkpoint(run)
    done = check_checkpoint(checkpoint) if checkpoint is not None else None  # damage named before the model loads
    if done is not None and done > cfg.max_steps:
        raise LlqaError(
            f"--resume --max-steps {cfg.max_steps}: the run in {run} has already done {done} steps",
            f"pass a --max-steps above {done} to train further (the run is left as it is)",
        )
    return checkpoint


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step a checkpoint was written at, from its state.json (None when unreadable: loading it names the
    damage)."""
    try:
        step = json.loads((checkpoint / "state.json").read_text(encoding="utf-8")).get("step")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _resume_note(cfg: TrainConfig, resume_from: Path | None) -> str | None:
    """What --resume does, when it is not the plain case of continuing from a checkpoint."""
    if not cfg.resume:
        return None
    if resume_from is None:
        return f"--resume: {cfg.run_dir} has no checkpoint yet, so training starts from step 0"
    if checkpoint_step(resume_from) == cfg.max_steps:
        return (
            f"--resume: the run already reached --max-steps {cfg.max_steps}; its final files are written again "
            f"from {resume_from.name}"
        )
    return None


def build_data(cfg: TrainConfig, tokenizer):
    """The run's dataset (PackedData or SftData) and its statistics."""
    if cfg.task == "train":
        needed = cfg.max_steps * cfg.batch_size
        meta = {
            "data": [str(Path(p).resolve()) for p in cfg.data],
            "dataset": cfg.dataset,
            "dataset_config": cfg.dataset_config,
            "split": cfg.split,
            "text_field": cfg.text_field,
            "ctx": cfg.ctx,
            "tokenizer": getattr(tokenizer, "name_or_path", ""),
            "vocab": len(tokenizer),
        }
        texts = (
            D.hub_documents(cfg.dataset, cfg.dataset_config, cfg.split, cfg.text_field)
            if cfg.dataset
            else D.read_documents(cfg.data, cfg.text_field)
        )
        packed, info = D.build_packed(texts, tokenizer, cfg.ctx, needed, cfg.run_dir / "data", meta)
        return packed, {**info, "epochs": round(needed / len(packed), 3)}
    records = (
        (
            (cfg.dataset, n, r)
            for n, r in enumerate(D.hub_records(cfg.dataset, cfg.dataset_config, cfg.split, streaming=False), 1)
        )
        if cfg.dataset
        else D.read_sft_items(cfg.data)
    )
    sft = D.build_sft(records, tokenizer, cfg.template, cfg.ctx)
    return sft, sft.stats


# --------------------------------------------------------------------------- one step


def sdpa_context(backend: str):
    """torch's SDPA kernel choice for forward, recomputation and backward (`--sdpa-backend`)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
    return sdpa_kernel([getattr(SDPBackend, names[backend])])


def offload_context(cfg: TrainConfig, device, model):
    """`--offload-activations`: the checkpointed layer inputs of this forward pass go to pinned CPU memory, copied
    on a side stream and prefetched back in backward (`trainer.offload`); all layers, or the first
    `--offload-fraction` of them. A no-op without CUDA (the tensors stay where they are)."""
    if not cfg.offload_activations:
        return contextlib.nullcontext()
    inner = getattr(model, "module", model)  # DDP
    config = getattr(getattr(inner, "model", inner), "config", None)
    return checkpoint_offload(device, config.num_hidden_layers, cfg.offload_fraction)


def _peak_memory_gib(device: torch.device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def oom_error(cfg: TrainConfig, device) -> LlqaError:
    import torch

    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 0
    hints = [f"--ctx below {cfg.ctx}"]
    if cfg.attn != "s2":
        hints.append("--attn s2")
    if not cfg.gradient_checkpointing:
        hints.append("gradient checkpointing (drop --no-gradient-checkpointing)")
    if cfg.micro_batch_size > 1:
        hints.append("--micro-batch-size 1")
    if cfg.method == "full":
        hints.append("--method longlora")
    if launched_world()[1] > 1 and cfg.parallel != "fsdp":
        hints.append("--parallel fsdp (weights sharded over the GPUs)")
    hints.append(f"--loss-chunk below {cfg.loss_chunk}")
    return LlqaError(
        f"CUDA out of memory training at --ctx {cfg.ctx} ({total:.0f} GiB device)",
        "lower the memory need: " + ", ".join(hints),
    )


def train_step(
    model,
    params,
    optimizer,
    scheduler,
    batches,
    cfg: TrainConfig,
    device,
    autocast_dtype,
    step: int,
    dist=None,
    cp: ContextParallelRun | None = None,
) -> tuple[float, float | None]:
    """One optimizer step over `batches` (this rank's micro-batches); returns (mean loss, grad norm).

    `model` is a `trainer.loss.CausalLMLoss` (or a bare causal LM, wrapped here), DDP-wrapped when several
    processes train (`dist`, see `trainer.distributed`): the loss and its gradient are then the token-weighted
    mean over the global batch of all ranks, equal to one process training on the same global batch. Under
    context parallelism (`cp`) every rank trains its shard of each sequence; the same weighting (local NLL sum
    × world / scored tokens of all ranks, then DDP's average) gives the same loss and gradient."""
    import torch

    dist = dist or DistInfo()
    if hasattr(model, "get_input_embeddings"):  # a bare causal LM (not already a loss module)
        model = CausalLMLoss(model, cfg.loss_chunk)
    extra: dict[str, Any] = {}
    if cp is not None:  # this rank's shard of each sequence, its targets aligned, global positions
        # SFT's rows are right-padded (to a multiple that splits into whole groups per rank): under causal
        # attention no real token reads a later pad, and pads are unscored, so the mask can go
        shards = [
            shard_batch(ids, labels, context_parallel_plan(ids.shape[1], cp.group.world, "s2", cfg.group_ratio),
                        cp.group.index)
            for ids, labels, _ in batches
        ]  # fmt: skip
        batches = [(ids, targets, None) for ids, targets, _ in shards]
        positions = [pos for _, _, pos in shards]
        local = sum(int((targets != -100).sum()) for _, targets, _ in batches)
    else:
        local = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in batches)
    total = int(all_reduce(dist, [local])[0]) or 1
    use_autocast = autocast_dtype != torch.float32
    loss_sum = 0.0
    for n, (ids, labels, mask) in enumerate(batches):
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mask = mask.to(device) if mask is not None else None
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if use_autocast else contextlib.nullcontext()
        # gradients are reduced over ranks once, in the last micro-batch's backward
        # (FSDP has no no_sync: it reduce-scatters every micro-batch into the sharded fp32 gradients)
        last = n == len(batches) - 1
        sync = model.no_sync() if dist.enabled and not last and hasattr(model, "no_sync") else contextlib.nullcontext()
        if cp is not None:
            extra = {"position_ids": positions[n].to(device), "aligned": True}
        # under context parallelism the backward too runs sharded: gradient checkpointing recomputes layers
        shard = sharded_s2(cp.group) if cp is not None else contextlib.nullcontext()
        with sync, shard, sdpa_context(cfg.sdpa_backend):
            with ctx, offload_context(cfg, device, model):
                loss, count = model(ids, labels, mask, **extra)
            value = loss.item()
            if not dist.enabled and not math.isfinite(value):
                raise _nan_error("loss", value, step, cfg)
            (loss * (int(count) * dist.world / total)).backward()  # DDP's average (÷ world) is undone
        loss_sum += value * int(count)
    loss_sum = all_reduce(dist, [loss_sum])[0]
    if not math.isfinite(loss_sum):  # every rank sees the same sum, so all stop together
        raise _nan_error("loss", loss_sum, step, cfg)
    norm = None
    if cfg.max_grad_norm > 0:
        norm = clip_grad_norm(params, cfg.max_grad_norm)
        if not math.isfinite(norm):
            raise _nan_error("gradient norm", norm, step, cfg)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / total, norm


def _nan_error(what: str, value: float, step: int, cfg: TrainConfig) -> TrainingStopped:
    last = latest_checkpoint(cfg.run_dir)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    return TrainingStopped(
        f"{what} is {value} at step {step + 1}: training stopped before the update; {kept}",
        "lower --lr (or --max-grad-norm), use --dtype bfloat16 or float32, then --resume",
    )


# --------------------------------------------------------------------------- the run


def _write_run_files(
    cfg: TrainConfig, loaded, data_stats, trainable: dict[str, int], step: int, world: int = 1, engine: str = "single"
) -> None:
    """`grad_accum`: micro-batches per optimizer step on each of the `world_size` processes of the last
    (possibly resumed) launch; global batch = micro-batch × grad_accum × world_size. `engine`: single, ddp
    or fsdp (`--parallel` resolved)."""
    atomic_write_json(
        cfg.run_dir / CONFIG_FILE,
        {
            "config": cfg.to_dict(),
            "semantics": SEMANTICS,
            "grad_accum": cfg.grad_accum // world,
            "world_size": world,
            "engine": engine,
            "model": loaded.info.to_dict(),
            "data": data_stats,
            "trainable": trainable,
            "steps_done": step,
        },
    )


def save_final(cfg: TrainConfig, model, loaded, step: int, state_dict: dict | None = None) -> None:
    """Final weights + tokenizer + llqa_model.json into the run directory (loadable by `--model RUN_DIR`).
    `state_dict`: the trained weights as full tensors, when `model` holds only this rank's shards (FSDP)."""
    run = cfg.run_dir
    if cfg.attn == "s2":
        disable_s2_attention(unwrapped(model))
    model.save_pretrained(run, **({"state_dict": state_dict} if state_dict is not None else {}))
    if not cfg.lora:
        add_legacy_rope_keys(run / "config.json")
    adapter_config = run / "adapter_config.json"
    if adapter_config.is_file():  # peft writes null or a cache path; set afterwards, so peft probes no hub for it
        saved = json.loads(adapter_config.read_text(encoding="utf-8"))
        atomic_write_json(adapter_config, {**saved, "base_model_name_or_path": adapter_base_name(cfg)})
    loaded.tokenizer.save_pretrained(run)
    base = base_spec(cfg, loaded)
    atomic_write_json(
        run / RUN_FILE,
        {
            "base_model": base,
            "ctx": cfg.ctx,
            "method": cfg.method,
            "attn": cfg.attn,
            "group_ratio": cfg.group_ratio,
            "steps": step,
            "task": cfg.task,
            # the prompt format sft trained on: `llqa eval longqa --model RUN` asks its questions the same way
            **({"template": cfg.template} if cfg.task == "sft" else {}),
            "rope": loaded.rope.record(),
        },
    )


def run_training(cfg: TrainConfig, console=None) -> TrainResult:
    """Train (or resume) the run described by `cfg`; see the module doc for what lands in the run directory.

    Under `torchrun` / `accelerate launch` every process calls this: data-parallel training (DDP or FSDP, see
    `trainer.distributed`), rank 0 alone writes the run directory, logs and checkpoints."""
    dist = init_distributed(resolve_device(cfg.device))
    try:
        _check_context_parallel_world(cfg, dist)
        micro_batches_per_rank(cfg.batch_size, cfg.micro_batch_size, dist.world // cfg.context_parallel)
        with _run_dir_lock(cfg, dist):
            resume_from = _check_run_dir(cfg)
            if cfg.data:
                D.check_local_data(cfg.task, cfg.data)
            note = _resume_note(cfg, resume_from)
            if note and dist.main and console is not None:
                console.print(f"[yellow]note:[/] {note}", highlight=False)
            barrier(dist)  # every rank has checked the run directory before rank 0 writes into it
            return _run(cfg, console, dist, resume_from)
    finally:
        shutdown(dist)


def _check_context_parallel_world(cfg: TrainConfig, dist) -> None:
    n = cfg.context_parallel
    if n > 1 and (dist.world < n or dist.world % n):
        raise LlqaError(
            f"--context-parallel {n} splits each sequence over {n} processes, but {dist.world} "
            + ("process runs" if dist.world == 1 else "processes run"),
            f"launch a multiple of {n} processes (torchrun --nproc-per-node {n} ...), or drop --context-parallel",
        )


@dataclass(frozen=True)
class ContextParallelRun:
    """This rank's place in context parallelism: its group of ranks (each batch is planned by its width)."""

    group: ContextParallelGroup


def _context_parallel_run(cfg: TrainConfig, dist) -> ContextParallelRun | None:
    """Groups of `--context-parallel` consecutive ranks each train one sequence at a time; every rank calls
    new_group for every group (torch.distributed's rule), and keeps its own."""
    n = cfg.context_parallel
    if n <= 1:
        return None
    import torch.distributed as tdist

    mine = None
    for first in range(0, dist.world, n):
        ranks = tuple(range(first, first + n))
        group = tdist.new_group(list(ranks))
        if dist.rank in ranks:
            mine = ContextParallelGroup(group, ranks, ranks.index(dist.rank))
    return ContextParallelRun(mine)


@contextlib.contextmanager
def _run_dir_lock(cfg: TrainConfig, dist):
    """Rank 0, which writes the run directory, holds its lock for the whole run, from before it checks what the
    directory holds; if it cannot, every rank stops (the others would wait for it forever)."""
    lock, refused = OutLock(cfg.run_dir), None
    if dist.main:
        try:
            lock.acquire()
        except LlqaError as e:
            refused = e
    if all_reduce(dist, [float(refused is not None)], op="max")[0]:
        raise refused or LlqaError(f"rank 0 could not lock {cfg.run_dir}", "see rank 0's message")
    try:
        yield
    finally:
        lock.release()


def _build_model(cfg: TrainConfig, dist, engine: str):
    """(loaded, device, compute dtype, model prepared for `cfg.method`, step module or None).

    FSDP builds the model on the meta device, prepares and shards it, and returns its step module
    (`trainer.fsdp`; rank 0 has kept a random base). Otherwise the model is loaded whole on this process's
    device, rank 0 keeps a copy of a random base (before LoRA layers go into it), the trainable set is
    prepared, and the step module is left to the caller (None)."""
    if engine == "fsdp":
        return load_sharded(cfg, dist)
    loaded, device, compute_dtype = load_base(cfg)
    if dist.main:
        save_random_base(cfg, loaded)
    return loaded, device, compute_dtype, prepare_model(cfg, loaded.model, compute_dtype), None


def _run(cfg: TrainConfig, console, dist, resume_from: Path | None) -> TrainResult:
    import torch

    if dist.main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
    engine = choose_engine(cfg, dist, resolve_device(cfg.device))
    cp = _context_parallel_run(cfg, dist)
    sharded = engine == "fsdp"
    loaded, device, compute_dtype, model, step_model = _build_model(cfg, dist, engine)
    if dist.main:  # rank 0 writes the packed data; the others then read it
        dataset, data_stats = build_data(cfg, loaded.tokenizer)
    barrier(dist)
    if not dist.main:
        dataset, data_stats = build_data(cfg, loaded.tokenizer)
    params, optimizer, scheduler = make_optimizer(cfg, model)
    trainable = {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "of_total": sum(p.numel() for p in model.parameters()),
    }
    state = {"step": 0, "consumed": 0}
    if resume_from is not None:  # every rank loads the same full checkpoint, whatever world size wrote it
        state = load_checkpoint(resume_from, model, optimizer, scheduler)
    if step_model is None:  # after the checkpoint is loaded: DDP broadcasts rank 0's weights as it wraps
        step_model = wrap_for_training(CausalLMLoss(model, cfg.loss_chunk), dist, device)
    if dist.main:
        _write_run_files(cfg, loaded, data_stats, trainable, state["step"], dist.world, engine)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    result = TrainResult(cfg.run_dir, state["step"], data=data_stats)
    logger = StepLogger(cfg, console, start=state["step"]) if dist.main else contextlib.nullcontext()

    def checkpoint(loss: float) -> None:
        if dist.main or sharded:  # one full checkpoint (FSDP: gathered from every rank's shards)
            save_checkpoint(
                cfg.run_dir,
                model,
                optimizer,
                scheduler,
                {**state, "last_loss": loss, "world_size": dist.world},
                keep=cfg.keep_checkpoints,
                write=dist.main,
            )
        barrier(dist)

    try:
        with logger, StopRequest() as stop:
            while state["step"] < cfg.max_steps:
                if cfg.stop_after is not None and state["step"] >= cfg.stop_after:
                    return result
                batches = _next_batches(cfg, dataset, state["consumed"], pad_id, dist, cfg.context_parallel)
                t0 = time.perf_counter()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                lr = optimizer.param_groups[0]["lr"]
                loss, norm = train_step(
                    step_model,
                    params,
                    optimizer,
                    scheduler,
                    batches,
                    cfg,
                    device,
                    compute_dtype,
                    state["step"],
                    dist,
                    cp,
                )
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                if not result.losses and dist.main and console is not None:  # this invocation's first step
                    note = compile_fallback_note(cfg, device)
                    if note:
                        console.print(f"[yellow]note:[/] {note}", highlight=False)
                state["step"] += 1
                state["consumed"] += cfg.batch_size
                tokens = sum(int(ids.numel()) if mask is None else int(mask.sum()) for ids, _, mask in batches)
                tokens /= cfg.context_parallel  # each of the group's ranks trained its shard of these sequences
                peak = _peak_memory_gib(device)
                # every rank stops after the same step: the stop flag travels with the step time
                dt, stop_flag = all_reduce(dist, [dt, float(stop.requested)], op="max")
                tokens = all_reduce(dist, [tokens])[0]
                per_rank = None
                if peak is not None and dist.enabled:  # peak_mem_gib: the fullest GPU, the one that runs out
                    per_rank = all_reduce(dist, [peak if r == dist.rank else 0.0 for r in range(dist.world)])
                    peak = max(per_rank)
                result.losses.append(loss)
                result.steps = state["step"]
                if dist.main:
                    logger.log(
                        state["step"],
                        {
                            "loss": loss,
                            "lr": lr,
                            "grad_norm": norm,
                            "tokens": int(tokens),
                            "tokens_per_s": tokens / dt,
                            "step_s": dt,
                            "peak_mem_gib": peak,
                            "world_size": dist.world,
                            "peak_mem_gib_per_rank": per_rank,
                        },
                    )
                if stop_flag or state["step"] % cfg.save_every == 0 or state["step"] == cfg.max_steps:
                    checkpoint(loss)
                if stop_flag and state["step"] < cfg.max_steps:
                    raise TrainingInterrupted(
                        stop.signum or signal.SIGTERM, state["step"], str(latest_checkpoint(cfg.run_dir)), "--resume"
                    )
    except torch.OutOfMemoryError:
        raise oom_error(cfg, device) from None
    full_state = None
    if sharded:  # the adapter (or model) is written from full tensors gathered on every rank
        full_state = trainable_state(model, aliases=True)
    if dist.main:
        save_final(cfg, model, loaded, state["step"], full_state)
        _write_run_files(cfg, loaded, data_stats, trainable, state["step"], dist.world, engine)
    barrier(dist)
    result.finished = True
    result.model = model
    return result


def _next_batches(cfg: TrainConfig, dataset, consumed: int, pad_id: int, dist=None, context_parallel: int = 1):
    """This rank's micro-batches of the global batch that starts at sample `consumed` (under context
    parallelism, its group's: the group's ranks each train a shard of the same sequences)."""
    dist = dist or DistInfo()
    n = len(dataset)
    items = [dataset.item(sample_index(consumed + i, n, cfg.seed, cfg.shuffle)) for i in range(cfg.batch_size)]
    items = rank_slice(items, dist.rank // context_parallel, dist.world // context_parallel)
    mb = cfg.micro_batch_size
    return [collate(items[i : i + mb], pad_id, cfg.pad_multiple) for i in range(0, len(items), mb)]


# --------------------------------------------------------------------------- logging


class StepLogger:
    """Per-step metrics to the console (rich progress), `log.jsonl` and TensorBoard (`tb/`)."""

    def __init__(self, cfg: TrainConfig, console, start: int):
        self.cfg, self.console, self.start = cfg, console, start
        self.path = cfg.run_dir / LOG_FILE

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.cfg.run_dir / "tb"), purge_step=self.start + 1 if self.start else None)
        self.progress = Progress(
            TextColumn(f"[bold]{self.cfg.task}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeRemainingColumn(),
            console=self.console or Console(stderr=True),
            transient=False,
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("steps", total=self.cfg.max_steps, completed=self.start, metrics="")
        return self

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        append_jsonl(self.path, {"step": step, **metrics, "time": time.time()})
        text = f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} {metrics['tokens_per_s']:,.0f} tok/s"
        if metrics["peak_mem_gib"] is not None:
            text += f" peak {metrics['peak_mem_gib']:.1f} GiB"
        self.progress.update(self.task, completed=step, metrics=text)
        if step % self.cfg.log_every == 0 or step == self.cfg.max_steps:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):  # None (no GPU) and per-rank lists are not scalars
                    self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.flush()

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        self.writer.close()
        return False
