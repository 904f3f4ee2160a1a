"""`--offload-activations`: gradient checkpoints kept in pinned CPU memory, copied on a side stream.

With reentrant gradient checkpointing, the only tensor a decoder layer saves in the forward pass is its input
(32 layers × N × 4096 × 2 B = 16 GiB for a 7B model at 64k tokens). `ActivationOffload` is a pair of
`torch.autograd.graph.saved_tensors_hooks` that moves such tensors to host memory and back:

- pack: a CUDA tensor of at least `min_bytes` (parameters excepted: their memory stays in use anyway) is
  copied device → host into a pinned buffer on a side stream, which first waits for the compute stream's
  work so far. The GPU tensor stays referenced until the copy's event has completed (checked, never waited
  for, at every later pack/unpack), so the allocator cannot hand its memory out while the copy reads it.
  Small tensors, integer tensors, CPU tensors and parameters are saved as they are. A tensor saved twice
  (same object, same version) gets the same host copy.
- unpack: backward asks for the tensors in reverse order, so when it asks for tensor k (packing order), the
  host → device copy of the next live tensor below k is issued on the side stream (`prefetch` of them), to
  run while tensor k's layer recomputes and backpropagates; the compute stream waits on an event only for
  the tensor it needs now (tensors kept on the GPU by `limit` also start the copy of the next one below them:
  so the last layer's input is on its way while the loss and the final norm backpropagate). A tensor
  unpacked twice (`retain_graph`) is copied again from its host copy; one never unpacked is freed with its
  autograd graph. Pinned buffers (sizes rounded up to a power of two)
  return to a pool when their graph is freed and are reused by the next step (pinning memory is slow); the
  pool never holds more than the most bytes the hooks ever held at once.

Dense non-contiguous tensors (a permutation of a contiguous layout) come back with their strides; other
views come back contiguous with the same values. Without CUDA the hooks keep every tensor as it is, so
the CPU path is plain autograd. `checkpoint_offload` is the trainer's use: only the checkpoint inputs (of
all layers, or of the first `fraction` of them) go to the CPU.
The result is exactly the result without offloading: the same values come back (tests/test_trainer_offload.py).
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from llqa.errors import LlqaError

MIN_BYTES = 1 << 20  # smaller saved tensors are not worth a copy: they stay where they are


class CudaCopier:
    """Device ↔ pinned-host copies on one side stream; events order them against the compute stream."""

    def __init__(self, device: torch.device):
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self.stream = torch.cuda.Stream(self.device)

    def offloads(self, t: torch.Tensor) -> bool:
        return t.is_cuda and t.device.index == self.device.index

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def to_host(self, src: torch.Tensor, dst: torch.Tensor):
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # src is complete on the compute stream
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def to_device(self, src: torch.Tensor):
        # allocated on the compute stream (which owns and frees it); written on the side stream after the compute
        # stream's work so far, i.e. while the layer that asked for the previous tensor runs
        dst = torch.empty(src.shape, dtype=src.dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return dst, event

    def done(self, event) -> bool:
        return event.query()

    def wait(self, event) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)


@dataclass(eq=False)
class _Saved:
    """One offloaded tensor: its host copy, how to rebuild it, and GPU references while copies are in flight."""

    index: int  # packing order
    host: torch.Tensor  # pinned bytes (the pool's buffer)
    shape: tuple  # shape of the stored (permuted-contiguous) layout
    dtype: torch.dtype
    inverse: tuple | None  # permutation that restores the original strides (None: identity)
    owner: ActivationOffload
    version: int
    gpu: torch.Tensor | None = None  # the saved GPU tensor itself, until the device → host copy is done
    gpu_event: Any = None
    prefetched: torch.Tensor | None = None  # host → device copy issued ahead of its unpack
    prefetch_event: Any = None
    unpacks: int = 0
    key: Any = field(default=None, repr=False)

    def __del__(self):
        try:
            self.owner._release(self)
        except Exception:  # interpreter shutdown: CUDA or the pool may already be gone
            pass


@dataclass(eq=False)
class _Kept:
    """A tensor that would be offloaded but is over `limit`: it stays on the GPU, and its place in packing order
    lets its unpack start the copy of the next offloaded tensor below it."""

    index: int
    tensor: torch.Tensor
    unpacks: int = 0


class ActivationOffload(torch.autograd.graph.saved_tensors_hooks):
    """Saved tensors to pinned host memory with side-stream copies and prefetch (see the module doc).

    `copier`: the device backend (default: `CudaCopier` for `device`; None or a CPU device = no offload, the
    hooks pass tensors through). Tests inject a host-only copier to exercise the bookkeeping without CUDA.
    `prefetch`: how many tensors ahead of the one backward asks for are copied back early. `limit`: offload
    at most this many tensors per entry of the context, the first ones (see `checkpoint_offload`)."""

    def __init__(
        self,
        device: torch.device | str | None = None,
        min_bytes: int = MIN_BYTES,
        prefetch: int = 1,
        copier=None,
        limit: int | None = None,
    ):
        if copier is None and device is not None and torch.device(device).type == "cuda":
            copier = CudaCopier(torch.device(device))
        self.copier, self.min_bytes, self.prefetch = copier, min_bytes, prefetch
        self.limit = limit
        self._this_entry = 0  # tensors offloaded since the hooks were last entered (for `limit`)
        self._lock = threading.RLock()
        self._count = 0
        self._live: dict[int, weakref.ref] = {}  # packing index -> live _Saved, in packing order
        self._by_tensor: dict[tuple, weakref.ref] = {}  # (id(tensor), version) -> its _Saved: saved twice
        self._pending: list[weakref.ref] = []  # host copies in flight: their GPU tensors are still referenced
        self._pool: dict[int, list[torch.Tensor]] = {}  # size (a power of two) -> free pinned buffers
        self._held = 0  # bytes of the buffers of live entries
        self._most_held = 0  # the most bytes ever held at once: the pool never keeps more than that in all
        self.stats = {
            "packed": 0,
            "offloaded_bytes": 0,
            "buffers_allocated": 0,
            "buffers_reused": 0,
            "prefetched": 0,
            "copied_on_demand": 0,
        }
        super().__init__(self._pack, self._unpack)

    def __enter__(self):
        self._this_entry = 0
        return super().__enter__()

    # ------------------------------------------------------------------ pack

    def _pack(self, t: torch.Tensor):
        # tensors left in place are saved detached (same storage and version counter): autograd rebuilds the saved
        # tensor's history on unpack, and the tensor itself would tie a saved output to its grad_fn (a gc cycle)
        if not self._offloads(t):
            return t.detach()
        if self.limit is not None and self._this_entry >= self.limit:
            with self._lock:
                self._count += 1
                return _Kept(self._count - 1, t.detach())
        with self._lock:
            self._collect()
            key = (id(t), t._version)
            ref = self._by_tensor.get(key)
            saved = ref() if ref is not None else None
            if saved is not None and saved.key[2]() is t:  # the same tensor again, unchanged
                return saved
            saved = self._offload(t)
            self._this_entry += 1
            saved.key = (*key, weakref.ref(t))
            self._by_tensor[key] = weakref.ref(saved)
            return saved

    def _offloads(self, t: torch.Tensor) -> bool:
        if self.copier is None or not self.copier.offloads(t):
            return False
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return False  # a weight (or its transpose) stays in GPU memory anyway: copying it frees nothing
        if not t.is_floating_point():
            return False  # token ids and other indices: small, and not the activations `limit` counts
        return t.numel() * t.element_size() >= self.min_bytes

    def _offload(self, t: torch.Tensor) -> _Saved:
        perm = _dense_order(t)
        src = t.permute(perm) if perm is not None else t.contiguous()
        inverse = tuple(perm.index(d) for d in range(t.dim())) if perm is not None else None
        nbytes = src.numel() * src.element_size()
        host = self._buffer(nbytes)
        view = host[:nbytes].view(src.dtype).view(src.shape)
        saved = _Saved(self._count, host, tuple(src.shape), src.dtype, inverse, self, src._version)
        # detached: the reference keeps the memory, not the autograd graph the tensor belongs to
        saved.gpu, saved.gpu_event = src.detach(), self.copier.to_host(src, view)
        self._count += 1
        self._live[saved.index] = weakref.ref(saved)
        self._pending.append(weakref.ref(saved))
        self.stats["packed"] += 1
        self.stats["offloaded_bytes"] += nbytes
        return saved

    def _buffer(self, nbytes: int) -> torch.Tensor:
        """A pinned buffer of at least `nbytes`, sized to the next power of two so that lengths that vary a little
        (sft) still reuse buffers. Pool plus live buffers stay within the most ever held at once: a miss first
        drops pooled buffers of other sizes (a workload whose sizes changed)."""
        size = 1 << max(nbytes - 1, 0).bit_length()
        self._held += size
        self._most_held = max(self._most_held, self._held)
        free = self._pool.get(size)
        if free:
            self.stats["buffers_reused"] += 1
            return free.pop()
        for other in sorted(self._pool, reverse=True):
            while self._pool[other] and self.pooled_bytes + self._held > self._most_held:
                self._pool[other].pop()
        self.stats["buffers_allocated"] += 1
        return self.copier.host_buffer(size)

    def _collect(self) -> None:
        """Drop the GPU references of host copies that have completed (never blocks)."""
        still = []
        for ref in self._pending:
            s = ref()
            if s is not None and s.gpu is not None and self.copier.done(s.gpu_event):
                s.gpu = None
            if s is not None and s.gpu is not None:
                still.append(ref)
        self._pending = still

    # ------------------------------------------------------------------ unpack

    def _unpack(self, saved):
        if isinstance(saved, torch.Tensor):
            return saved
        with self._lock:
            self._collect()
            saved.unpacks += 1
            if isinstance(saved, _Kept):  # e.g. the final norm's input: the last offloaded layer input is next
                self._prefetch_below(saved)
                return saved.tensor
            out = self._take(saved)
            self._prefetch_below(saved)
        return out if saved.inverse is None else out.permute(saved.inverse)

    def _take(self, saved: _Saved) -> torch.Tensor:
        if saved.gpu is not None and saved.gpu._version == saved.version:
            return saved.gpu  # its host copy is still in flight: the GPU tensor itself is at hand
        if saved.prefetched is not None:
            out, event = saved.prefetched, saved.prefetch_event
            saved.prefetched = saved.prefetch_event = None  # a second unpack copies again
        else:
            out, event = self._copy_back(saved)
            self.stats["copied_on_demand"] += 1
        self.copier.wait(event)
        return out

    def _copy_back(self, saved: _Saved):
        nbytes = torch.Size(saved.shape).numel() * saved.dtype.itemsize
        return self.copier.to_device(saved.host[:nbytes].view(saved.dtype).view(saved.shape))

    def _prefetch_below(self, saved: _Saved | _Kept) -> None:
        """Issue the copies of the next `prefetch` live tensors below `saved` in packing order that have been
        unpacked fewer times than it (the ones this backward pass will ask for next)."""
        want = self.prefetch
        for index in sorted((i for i in self._live if i < saved.index), reverse=True):
            if want <= 0:
                return
            ref = self._live.get(index)  # a release (a graph freed meanwhile) may have removed it
            s = ref() if ref is not None else None
            if s is None or s.unpacks >= saved.unpacks:
                continue
            want -= 1
            if s.prefetched is None and s.gpu is None:
                s.prefetched, s.prefetch_event = self._copy_back(s)
                self.stats["prefetched"] += 1

    # ------------------------------------------------------------------ release

    def _release(self, saved: _Saved) -> None:
        """Its autograd graph is gone: in-flight copies are ordered before later compute work, the pinned
        buffer goes back to the pool (later copies into it queue behind earlier ones on the side stream)."""
        with self._lock:
            for tensor, event in ((saved.gpu, saved.gpu_event), (saved.prefetched, saved.prefetch_event)):
                if tensor is not None and not self.copier.done(event):
                    self.copier.wait(event)
            saved.gpu = saved.prefetched = None
            self._live.pop(saved.index, None)
            if (
                saved.key is not None
                and self._by_tensor.get(saved.key[:2]) is not None
                and self._by_tensor[saved.key[:2]]() in (None, saved)
            ):
                del self._by_tensor[saved.key[:2]]
            self._pending = [r for r in self._pending if r() is not None]
            self._held -= saved.host.numel()
            self._pool.setdefault(saved.host.numel(), []).append(saved.host)

    @property
    def pooled_buffers(self) -> int:
        return sum(len(v) for v in self._pool.values())

    @property
    def pooled_bytes(self) -> int:
        return sum(b.numel() for v in self._pool.values() for b in v)


def _dense_order(t: torch.Tensor) -> list[int] | None:
    """A permutation `p` with `t.permute(p)` contiguous (strides kept on the way back), or None."""
    perm = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return perm if t.permute(perm).is_contiguous() else None


# --------------------------------------------------------------------------- the trainer's use


@functools.cache
def _per_device(device: torch.device) -> ActivationOffload:
    return ActivationOffload(device)


def checkpoint_offload(device: torch.device, layers: int, fraction: float = 1.0) -> ActivationOffload:
    """The hooks `llqa train --offload-activations` enters around each micro-batch's forward pass.

    Under reentrant gradient checkpointing the first large tensors a forward pass saves are the checkpoint
    inputs, one per decoder layer, in layer order (the embedding saves only the token ids, an integer tensor;
    inside a layer nothing is saved); then come the final norm's and the loss's saves. So offloading the
    first `round(fraction × layers)` large tensors of each forward pass (`limit`) offloads exactly the inputs
    of the first layers, and the tail, needed first in backward, stays on the GPU. The first layers' inputs
    are needed last in backward: there is the most time to bring them back. The first unpack in backward
    (the loss's saved gradient) already starts the copy of the last offloaded input, so with `fraction` < 1
    that tensor (one layer input) is back on the GPU while the kept layers backpropagate. One instance per
    device, so its pinned buffers are reused from step to step."""
    if not 0 <= fraction <= 1:
        raise LlqaError(f"offload fraction {fraction} is not in [0, 1]", "pass e.g. 1 (all layers) or 0.5")
    hooks = _per_device(torch.device(device))
    hooks.limit = round(fraction * layers)
    return hooks
