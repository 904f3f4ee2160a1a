"""Device micro-benchmark: host and GPU time per S2 attention call (forward; forward+backward), per
implementation, on the SmolLM2-135M attention shape at 16k (and the 7B shape), and the prototypes' outputs
and gradients against the SDPA backend's. Usage (repository root, CUDA):

    python micro.py check N,Hq,Hkv,D IMPL[,IMPL...]
    python micro.py bench N,Hq,Hkv,D IMPL[,IMPL...]

"fold-flash" / "fold-cudnn" are the prototypes measured before the varlen backend was changed: heads folded
into the token dimension, one call of torch's flash varlen op / cuDNN's ragged op per layer."""

import sys
import time
import traceback

import torch

sys.path.insert(0, ".")
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from trainer import s2attn

dev = torch.device("cuda")
dt = torch.bfloat16
s2attn._ratio_parts(0.25)
for p in (s2attn.flash_attn_available, s2attn._torch_varlen_params, s2attn._aten_flash_varlen_available):
    p()
print(torch.__version__, torch.backends.cudnn.version(), torch.cuda.get_device_name(), flush=True)

_cu = {}


def fold(q, k, v, G, kernel):
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    r = Hq // Hkv
    skv = s2attn.shifted_heads(Hq, Hkv) // r
    key = (B, Hkv, N, G)
    if key not in _cu:
        starts = []
        for j in range(Hkv):
            cuts = s2attn.partition(N, G, j >= skv)
            for b in range(B):
                starts += [(j * B + b) * N + c for c in cuts[:-1]]
        starts.append(Hkv * B * N)
        _cu[key] = torch.tensor(starts, dtype=torch.int32, device=q.device)
    cu = _cu[key]
    qf = q.unflatten(1, (Hkv, r)).permute(1, 0, 3, 2, 4).reshape(Hkv * B * N, r, D)
    kf = k.permute(1, 0, 2, 3).reshape(Hkv * B * N, 1, D)
    vf = v.permute(1, 0, 2, 3).reshape(Hkv * B * N, 1, D)
    if kernel == "flash":
        out = torch.ops.aten._flash_attention_forward(qf, kf, vf, cu, cu, G, G, 0.0, True, False, scale=None)[0]
    else:
        out = torch.ops.aten._cudnn_attention_forward(
            qf, kf, vf, None, cu, cu, G, G, True, 0.0, True, False, scale=None
        )[0]
    return out.view(Hkv, B, N, r, D).permute(1, 2, 0, 3, 4).reshape(B, N, Hq, D)


class M(torch.nn.Module):
    pass


mod = M()
mod.is_causal = True
mod.num_key_value_groups = 3


def impls(G):
    return {
        "floor": lambda q, k, v: q.transpose(1, 2),
        "full": lambda q, k, v: sdpa_attention_forward(mod, q, k, v, None, is_causal=True)[0],
        "s2-sdpa": lambda q, k, v: s2attn.s2_attention(q, k, v, G, backend="sdpa"),
        "s2-varlen": lambda q, k, v: s2attn.s2_attention(q, k, v, G, backend="varlen"),
        "fold-flash": lambda q, k, v: fold(q, k, v, G, "flash"),
        "fold-cudnn": lambda q, k, v: fold(q, k, v, G, "cudnn"),
    }


def inputs(N, Hq, Hkv, D, grad):
    torch.manual_seed(0)
    x = torch.randn(1, N, Hq * D, device=dev, dtype=dt, requires_grad=grad)
    y = torch.randn(1, N, Hkv * D, device=dev, dtype=dt, requires_grad=grad)
    z = torch.randn(1, N, Hkv * D, device=dev, dtype=dt, requires_grad=grad)
    q = x.view(1, N, Hq, D).transpose(1, 2)
    k = y.view(1, N, Hkv, D).transpose(1, 2)
    v = z.view(1, N, Hkv, D).transpose(1, 2)
    return (x, y, z), (q, k, v)


def timeit(fn, iters=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    e0.record()
    for _ in range(iters):
        fn()
    t1 = time.perf_counter()
    e1.record()
    torch.cuda.synchronize()
    return (t1 - t0) / iters * 1e6, e0.elapsed_time(e1) / iters * 1e3


def check(N, Hq, Hkv, D, G):
    (lx, (q, k, v)) = inputs(N, Hq, Hkv, D, True)
    g = torch.randn(1, N, Hq, D, device=dev, dtype=dt)
    ref = None
    for name in ["s2-sdpa", *CHECK]:
        try:
            for t in lx:
                t.grad = None
            out = impls(G)[name](q, k, v)
            out.backward(g)
            res = (out.float(), *(t.grad.float() for t in lx))
            if ref is None:
                ref = res
                print(f"  check {name}: reference", flush=True)
                continue
            errs = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(res, ref, strict=True)]
            print(f"  check {name}: rel max err out/dq/dk/dv {[f'{e:.2e}' for e in errs]}", flush=True)
        except Exception as e:
            print(f"  check {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)


def bench(N, Hq, Hkv, D, names):
    G = N // 4
    print(f"shape N={N} Hq={Hq} Hkv={Hkv} D={D} G={G}", flush=True)
    for name in names:
        fn = impls(G)[name]
        try:
            _, (q, k, v) = inputs(N, Hq, Hkv, D, False)
            with torch.no_grad():
                h_f, g_f = timeit(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
            lx, (q, k, v) = inputs(N, Hq, Hkv, D, True)
            gr = torch.randn(1, N, Hq, D, device=dev, dtype=dt)
            h_b, g_b = timeit(lambda fn=fn, q=q, k=k, v=v, gr=gr: fn(q, k, v).backward(gr))
            print(
                f"  {name:11} fwd host {h_f:7.1f} us gpu {g_f:8.1f} us | fwd+bwd host {h_b:7.1f} us gpu {g_b:8.1f} us",
                flush=True,
            )
        except Exception as e:
            print(f"  {name:11} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            traceback.print_exc(limit=3)


mode, shape, names = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], sys.argv[3].split(",")
if mode == "check":
    N, Hq, Hkv, D = shape
    CHECK = names
    check(N, Hq, Hkv, D, N // 4)
else:
    bench(*shape, names)
