"""S2-Attn inside compiled decoder layers: compiled step times at one length, and dynamo's graph-break counter.

A random SmolLM2-135M-shaped model built in memory (no tokenizer file needed), gradient checkpointing, every
decoder layer compiled as `llqa train --compile default` does; per variant 7 steps, the median of the last 5
reported. Run from the repository root on a GPU: `python3 THIS_FILE [tokens] [variants] [compiled|eager]`
(eager: the same steps without compiling the layers); set TORCH_LOGS=graph_breaks to see dynamo's reasons.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from benchmarks.decode_kernels import random_model, word_tokenizer  # noqa: E402
from benchmarks.s2attn import loss_fn, use_variant  # noqa: E402
from trainer.compile import compile_layers  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
VARIANTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["full", "s2", "s2-varlen", "floor"]
MODE = sys.argv[3] if len(sys.argv) > 3 else "compiled"

device = torch.device("cuda")
model = random_model("smollm2-135m", N, word_tokenizer(49152), device, torch.bfloat16)
model.config.use_cache = False
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.train()
if MODE == "compiled":
    compile_layers(model, "default", dynamic=False)
loss = loss_fn()
ids = torch.randint(0, 49152, (1, N), device=device)
for variant in VARIANTS:
    use_variant(model, variant, 0.25)
    counters.clear()
    times = []
    for _ in range(7):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss(model, ids).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    print(
        f"{MODE} {variant:10} N={N} median of last 5: {statistics.median(times[2:]):.3f} s"
        f"  all {[round(t, 3) for t in times]}"
    )
    print(f"   unique_graphs {counters['stats'].get('unique_graphs')}  graph breaks: {len(counters['graph_break'])}")
