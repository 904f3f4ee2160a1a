"""trainer.offload: the activation-offload hooks give autograd's exact result, and their bookkeeping (prefetch
order, a tensor saved twice, retain_graph, tensors never unpacked, the pinned-buffer pool, strides) is right.
Without CUDA a host-only copier stands in for the device: every copy is logged, events complete on demand."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from tests.conftest import build_tiny_llama, llqa_in_process, load_benchmark, tiny_train_args, train_step_grads
from trainer.config import TrainConfig
from trainer.offload import ActivationOffload, checkpoint_offload


class FakeEvent:
    def __init__(self, done: bool):
        self.done = done


class HostCopier:
    """The copier interface on CPU tensors: offloads every tensor, logs (direction, tensor tag) per copy."""

    def __init__(self, complete: bool = True):
        self.complete, self.log, self.events, self.shapes = complete, [], [], []

    def offloads(self, t):
        return True

    def host_buffer(self, nbytes):
        return torch.empty(nbytes, dtype=torch.uint8)

    def to_host(self, src, dst):
        dst.copy_(src)
        self.shapes.append(tuple(src.shape))
        self.log.append(("d2h", _tag(src)))
        self.events.append(FakeEvent(self.complete))
        return self.events[-1]

    def to_device(self, src):
        self.log.append(("h2d", _tag(src)))
        return src.clone(), FakeEvent(True)

    def done(self, event):
        return event.done

    def wait(self, event):
        self.log.append(("wait",))


def _tag(t):
    return float(t.detach().reshape(-1)[0])


def _offload(**kw):
    copier = HostCopier(kw.pop("complete", True))
    return ActivationOffload(copier=copier, min_bytes=0, **kw), copier


def _chain(n: int, hooks=None, shape=(4, 4)):
    """x_k = sin(x_{k-1}) for k = 1..n (each sin saves its input); x_0 = 1.5 (tags 1.5, sin(1.5), ...)."""
    x0 = torch.full(shape, 1.5, requires_grad=True)
    xs = [x0]
    with hooks if hooks is not None else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        for _ in range(n):
            xs.append(torch.sin(xs[-1]))
    return x0, xs


def test_prefetch_issues_the_next_tensor_before_backward_asks_for_it():
    hooks, copier = _offload()
    x0, xs = _chain(4, hooks)
    tags = [_tag(x) for x in xs[:4]]  # saved tensors in packing order: the inputs of the 4 sins
    assert copier.log == [("d2h", t) for t in tags]
    copier.log.clear()
    xs[-1].sum().backward()
    # tensor 3: its GPU reference is dropped once its copy is done, so it is copied on demand; each unpack k then
    # prefetches k-1, and the compute stream waits only for the tensor it needs
    assert copier.log == [
        ("h2d", tags[3]),
        ("wait",),
        ("h2d", tags[2]),
        ("wait",),
        ("h2d", tags[1]),
        ("wait",),
        ("h2d", tags[0]),
        ("wait",),
    ]
    assert hooks.stats["prefetched"] == 3 and hooks.stats["copied_on_demand"] == 1
    x_ref, ys = _chain(4)
    ys[-1].sum().backward()
    assert torch.equal(x0.grad, x_ref.grad)


def test_gpu_tensor_is_kept_until_its_copy_is_done():
    hooks, copier = _offload(complete=False)
    x = torch.randn(8, requires_grad=True)
    with hooks:
        a = x * 2
        b = a.sin()  # saves a
    ptr = a.data_ptr()

    def held():
        return [r().gpu for r in hooks._pending if r() is not None and r().gpu is not None]

    del a
    gc.collect()
    assert [t.data_ptr() for t in held()] == [ptr]  # copy not completed: the offloader still holds the memory
    for e in copier.events:
        e.done = True
    with hooks:
        (x * 3).cos()  # any later pack collects completed copies
    assert held() == []
    b.sum().backward()
    torch.testing.assert_close(x.grad, torch.cos(x * 2).detach() * 2, rtol=0, atol=0)


def test_tensor_saved_twice_is_copied_once_and_views_come_back_right():
    hooks, copier = _offload()
    x = torch.randn(6, 5, requires_grad=True)
    with hooks:
        y = x * 1.5
        out = y.sin() + y.cos()  # y saved by sin and by cos: one copy
    assert hooks.stats["packed"] == 1  # x * 1.5 saves nothing (a constant factor); y is saved once
    out.sum().backward()
    want = x.detach().clone().requires_grad_()
    w = want * 1.5
    (w.sin() + w.cos()).sum().backward()
    assert torch.equal(x.grad, want.grad)
    # strides: a transposed (dense) tensor comes back with its strides, a strided slice with its values
    t = torch.randn(3, 4).t()
    back = hooks.unpack_hook(hooks.pack_hook(t))
    assert torch.equal(back, t) and back.stride() == t.stride()
    s = torch.randn(6, 8)[::2, 1:5]
    back = hooks.unpack_hook(hooks.pack_hook(s))
    assert torch.equal(back, s)
    p, packed = torch.nn.Parameter(torch.randn(4, 4)), hooks.stats["packed"]
    for weight in (p, p.t()):  # weights stay where they are: saved as themselves (detached), no copy
        assert hooks.pack_hook(weight).data_ptr() == p.data_ptr()
    assert hooks.stats["packed"] == packed


def test_retain_graph_unpacks_twice_and_unused_tensors_are_freed_into_the_pool():
    hooks, copier = _offload()
    x0, xs = _chain(3, hooks)
    xs[-1].sum().backward(retain_graph=True)
    g1 = x0.grad.clone()
    xs[-1].sum().backward()  # every tensor copied back again from its host copy
    assert torch.equal(x0.grad, 2 * g1)
    assert sum(1 for e in copier.log if e[0] == "h2d") == 6
    del xs, x0
    gc.collect()
    assert hooks.pooled_buffers == 3 and not hooks._live  # graph freed: buffers back in the pool
    _, xs = _chain(3, hooks)  # a forward whose graph is dropped without backward
    assert hooks.stats["buffers_reused"] == 3 and hooks.stats["buffers_allocated"] == 3
    del xs
    gc.collect()
    assert hooks.pooled_buffers == 3 and not hooks._live and not hooks._pending


def test_pool_rounds_sizes_and_stays_within_the_most_ever_held():
    hooks, _ = _offload()
    _, xs = _chain(3, hooks, (4, 5))  # 80 B each -> 128 B buffers
    del xs
    gc.collect()
    assert hooks.pooled_bytes == 3 * 128 and hooks.stats["buffers_allocated"] == 3
    _, xs = _chain(3, hooks, (4, 6))  # 96 B: the same 128 B buffers serve a slightly different length
    assert hooks.stats["buffers_reused"] == 3 and hooks.stats["buffers_allocated"] == 3
    del xs
    gc.collect()
    for shape in [(16, 16), (4, 4), (16, 16)]:  # sizes that change: the pool drops what no longer fits
        _, xs = _chain(3, hooks, shape)
        assert hooks.pooled_bytes + hooks._held <= hooks._most_held
        del xs
        gc.collect()
    assert hooks._held == 0 and hooks.pooled_bytes <= hooks._most_held == 3 * 1024


def test_limit_offloads_the_first_tensors_of_each_entry():
    hooks, copier = _offload(limit=2)
    _chain(4, hooks)
    assert hooks.stats["packed"] == 2  # the first two of each entry
    x0, xs = _chain(4, hooks)
    assert hooks.stats["packed"] == 4
    tags = [_tag(x) for x in xs[:2]]
    copier.log.clear()
    xs[-1].sum().backward()
    # the kept tensors 3 and 2 come first: unpacking 3 already starts the copy of 1, unpacking 1 that of 0
    assert copier.log == [("h2d", tags[1]), ("wait",), ("h2d", tags[0]), ("wait",)]
    x_ref, ys = _chain(4)
    ys[-1].sum().backward()
    assert torch.equal(x0.grad, x_ref.grad)


def test_cpu_device_leaves_tensors_in_place():
    hooks = ActivationOffload("cpu")
    t = torch.randn(1024, 1024)
    assert hooks.pack_hook(t).data_ptr() == t.data_ptr() and hooks.stats["packed"] == 0
    x = torch.randn(8, requires_grad=True)
    with hooks:
        y = x.exp()  # exp saves its own output
    (y * 2).sum().backward(retain_graph=True)  # the graph (and what it saved) stays alive with y
    assert torch.equal(x.grad, 2 * x.detach().exp())
    ref = weakref.ref(y)
    del y
    assert ref() is None  # freed at once: the saved output does not point back at its grad_fn (no gc cycle)
    assert checkpoint_offload(torch.device("cpu"), 32, 0.5).limit == 16
    with pytest.raises(Exception, match="not in"):
        checkpoint_offload(torch.device("cpu"), 32, 1.5)


def _tiny_grads(hooks):
    """Loss gradients of a tiny Llama with reentrant checkpointing, the forward under `hooks` (or none)."""
    model = build_tiny_llama(512, seed=1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    with hooks if hooks is not None else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _layer_inputs():
    model = build_tiny_llama(512, seed=1)
    seen = []
    for layer in model.model.layers:
        layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids)
    return seen


def test_offloaded_checkpoints_give_bit_identical_gradients():
    want = _tiny_grads(None)
    hooks, copier = _offload(limit=2)
    hooks.min_bytes = 1024  # the token ids (256 B) stay, as at full size (MIN_BYTES)
    got = _tiny_grads(hooks)
    layer_inputs = [("d2h", _tag(t)) for t in _layer_inputs()]
    assert copier.log[:2] == layer_inputs  # the two layers' checkpoint inputs, nothing else
    assert want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)
    hooks, _ = _offload(limit=1)
    hooks.min_bytes = 1024  # partial: the first layer only
    got = _tiny_grads(hooks)
    assert hooks.stats["packed"] == 1 and all(torch.equal(want[n], got[n]) for n in want)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_trainer_step_offloads_exactly_the_checkpoint_inputs(tmp_path, monkeypatch, fraction):
    """The trainer's own step (LoRA+, S2-Attn, chunked loss) with the host copier standing in for CUDA: per
    micro-batch the first layers' inputs, and nothing else, are offloaded; loss and gradients are bit-identical
    to the same step without offloading (the CPU path, where the hooks keep every tensor in place)."""
    import trainer.offload as offload

    loss, want, _ = train_step_grads(tmp_path / "a", offload_activations=True)
    hooks, copier = _offload()
    hooks.min_bytes = 1024  # as MIN_BYTES at full size: a layer input (64 x 64 fp32 = 16 KiB) counts
    monkeypatch.setattr(offload, "_per_device", lambda device: hooks)
    loss2, got, _ = train_step_grads(tmp_path / "b", offload_activations=True, offload_fraction=fraction)
    per_batch = round(2 * fraction)  # the tiny Llama has 2 layers; the step runs 2 micro-batches of 1 x 64
    assert copier.shapes == [(1, 64, 64)] * (2 * per_batch)
    # every copy back was issued ahead: the loss's and the norm's saves (kept) start the last offloaded input's
    assert hooks.stats["packed"] == 2 * per_batch and hooks.stats["prefetched"] == 2 * per_batch
    assert hooks.stats["copied_on_demand"] == 0
    assert loss2 == loss and want.keys() == got.keys() and all(torch.equal(want[n], got[n]) for n in want)


def test_train_cli_offload_fraction(capsys, tmp_path, tiny_llama_dir):
    """`llqa train --offload-activations --offload-fraction 0.5` trains and records the fraction (it may change on
    --resume); a fraction outside [0, 1] is one line and exit 2."""
    args = tiny_train_args(tmp_path, tiny_llama_dir, "offloading the checkpoints")
    code, out = llqa_in_process(capsys, *args, "--out", str(tmp_path / "bad"), "--offload-fraction", "1.5")
    assert code == 2 and "--offload-fraction must be a number in [0, 1], got 1.5" in out and "Traceback" not in out, out
    code, out = llqa_in_process(capsys, *args, "--out", str(tmp_path / "run"), "--offload-fraction", "0.5")
    assert code == 0 and "done: 1 steps" in out, out
    saved = TrainConfig.read(tmp_path / "run")
    assert saved.offload_fraction == 0.5 and saved.offload_activations
    assert saved.differences(TrainConfig(**{**saved.to_dict(), "offload_fraction": 1.0})) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_on_cuda_lowers_peak_memory_and_keeps_gradients():
    import torch.utils.checkpoint

    dev = torch.device("cuda")

    def run(hooks):
        torch.manual_seed(0)
        layers = torch.nn.ModuleList(torch.nn.Linear(1024, 1024) for _ in range(16)).to(dev)
        x = torch.randn(8192, 1024, device=dev, requires_grad=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with hooks if hooks is not None else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            h = x
            for layer in layers:
                h = torch.utils.checkpoint.checkpoint(layer, h, use_reentrant=True)
        peak_fwd = torch.cuda.max_memory_allocated() - base
        h.float().pow(2).sum().backward()
        torch.cuda.synchronize()
        return peak_fwd, x.grad, [p.grad for p in layers.parameters()]

    peak0, gx0, gp0 = run(None)
    hooks = ActivationOffload(dev)
    peak1, gx1, gp1 = run(hooks)
    assert hooks.stats["packed"] == 16 and hooks.stats["prefetched"] >= 1
    # 15 checkpoints of 32 MiB (the 16th is x, allocated before): at least 8 of them are not on the GPU at once
    assert peak1 < peak0 - 8 * 8192 * 1024 * 4
    assert torch.equal(gx0, gx1) and all(torch.equal(a, b) for a, b in zip(gp0, gp1, strict=True))


def test_train_7b_offload_rows_on_cpu(tmp_path):
    """benchmarks/train_7b.py: the new offload, its half form and the previous save_on_cpu form run and give the
    base loss; two offload forms cannot combine."""
    bench = load_benchmark("train_7b")
    with pytest.raises(ValueError, match="exclude each other"):
        bench.lever_parts("offload+offload-sync")
    args = [
        "--model",
        "random:tiny",
        "--lengths",
        "128",
        "--lever-lengths",
        "128",
        "--device",
        "cpu",
        "--levers",
        "base,offload,offload-half,offload-sync",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(args) == 0
    import json

    rows = json.loads((tmp_path / "train_7b.json").read_text())["results"]
    assert set(rows) == {"base@128", "offload@128", "offload-half@128", "offload-sync@128"}
    for key in ("offload@128", "offload-half@128", "offload-sync@128"):
        assert "error" not in rows[key] and abs(rows[key]["loss"] - rows["base@128"]["loss"]) < 1e-4, key
