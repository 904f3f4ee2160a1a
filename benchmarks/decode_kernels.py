"""Decoding speed of the generation harness under two SDPA kernel policies, for new and repeated batch shapes.

torch picks cuDNN's attention first on Hopper GPUs. cuDNN builds an execution plan per input shape, and a
decoding step's key length is one more than the step before, so a batch whose shape was never decoded builds
a plan at every step; a batch repeating a shape finds them cached. The RULER suite on an H200 showed exactly
that pattern (68-97 ms per step for the first batch of a shape, ~30 ms for repeats). This measures it through
the harness itself (`evals.generation.generate_greedy`, the code every generation eval runs):

- `torch`: torch's kernel choice for the prefill and the decoding steps (what the harness did before);
- `no-cudnn`: torch's choice for the prefill, every kernel but cuDNN's for the decoding steps (the default).

For each `--cases` entry ROWSxWIDTH and each policy: 2 × ROWS random prompts of exactly WIDTH tokens (the
second policy's WIDTH is 16 less, so its shapes are new to cuDNN's plan cache too), decoded greedily for
`--new-tokens` tokens with no EOS, in two batches of ROWS: the first batch's shape is new, the second repeats
it. Reported per batch: prefill seconds (to the first new token) and ms per decoding step (the rest of the
batch's time over the remaining steps). A random-weight model of a named shape (`--shape`, llqa's `random:`
shapes) and an in-memory word-level tokenizer: nothing is downloaded, and weights do not change timing.

The H200 command (about two minutes; the RULER batch shapes of SmolLM2-135M):
    python benchmarks/decode_kernels.py --cases 20x8064,64x32640 --out benchmarks/results/decode-kernels-h200
CPU proof at a tiny size (the policies differ on CUDA only):
    python benchmarks/decode_kernels.py --shape tiny --cases 2x64 --new-tokens 4 --out /tmp/deckern
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from evals.generation import generate_greedy  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import RANDOM_SHAPES, load_config, resolve, resolve_device, resolve_dtype  # noqa: E402

POLICIES = {"torch": False, "no-cudnn": True}  # policy -> generate_greedy's avoid_cudnn_decode
VOCAB = 49152  # the default model's vocabulary, as llqa's random shapes use


def word_tokenizer(vocab: int):
    """A word-level tokenizer over `vocab` made-up words, built in memory: id i decodes to `w{i}`. It has a
    pad token and no EOS, so every row decodes the whole budget."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    core = Tokenizer(WordLevel(words, unk_token="w1"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="w0", unk_token="w1")


def random_model(shape: str, longest: int, tokenizer, device, dtype):
    """llqa's `random:<shape>` config (its vocabulary the tokenizer's), with positions for `longest` tokens."""
    from transformers import LlamaForCausalLM

    config = load_config(resolve(f"random:{shape}"), tokenizer)
    config.max_position_embeddings = max(longest, config.max_position_embeddings)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = None
    return model.eval()


def parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for item in text.split(","):
        rows, _, width = item.strip().partition("x")
        if not (rows.isdigit() and width.isdigit()) or int(rows) < 1 or int(width) < 32:
            raise SystemExit(f"--cases: '{item}' is not ROWSxWIDTH with WIDTH >= 32 (e.g. 20x8064)")
        cases.append((int(rows), int(width)))
    return cases


def run_case(model, tokenizer, rows: int, width: int, policy: str, new_tokens: int, device) -> list[dict]:
    g = torch.Generator().manual_seed(rows * 100_003 + width)
    prompts = [torch.randint(2, VOCAB, (width,), generator=g).tolist() for _ in range(2 * rows)]
    batches: list[dict] = []
    for _ in generate_greedy(
        model,
        tokenizer,
        prompts,
        new_tokens,
        batch_tokens=rows * width,
        max_batch=rows,
        progress=False,
        on_batch=batches.append,
        avoid_cudnn_decode=POLICIES[policy],
    ):
        pass
    out = []
    for n, b in enumerate(batches):
        steps = max(1, b["new_tokens"] - 1)
        out.append(
            {
                "policy": policy,
                "rows": b["rows"],
                "width": b["width"],
                "shape": "new" if n == 0 else "repeated",
                "prefill_s": b["first_token_s"],
                "decode_ms_per_step": round(1e3 * (b["seconds"] - b["first_token_s"]) / steps, 2),
                "new_tokens": b["new_tokens"],
            }
        )
        print(
            f"{policy:>9} {b['rows']:>4} x {b['width']:<6} {out[-1]['shape']:>8}: prefill {b['first_token_s']:.2f} s, "
            f"decoding {out[-1]['decode_ms_per_step']:.1f} ms/step",
            flush=True,
        )
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(RANDOM_SHAPES), help="random model shape")
    p.add_argument("--cases", default="20x8064,64x32640", help="comma-separated ROWSxWIDTH batch shapes")
    p.add_argument("--new-tokens", type=int, default=128, help="decoding budget per row (RULER's niah: 128)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that has it, else fp32), bfloat16, float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    cases = parse_cases(args.cases)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    tokenizer = word_tokenizer(VOCAB)
    model = random_model(args.shape, max(w for _, w in cases) + args.new_tokens, tokenizer, device, dtype)
    rows = []
    for n_rows, width in cases:
        for k, policy in enumerate(POLICIES):
            rows += run_case(model, tokenizer, n_rows, width - 16 * k, policy, args.new_tokens, device)

    def mean_step(policy: str, shape: str) -> float:
        return statistics.mean(r["decode_ms_per_step"] for r in rows if r["policy"] == policy and r["shape"] == shape)

    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"dtype": str(dtype).removeprefix("torch.")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "measure": "per batch: prefill_s = seconds to the first new token; decode_ms_per_step = the rest of the "
        "batch's wall time over new_tokens - 1 steps; shape 'new' = the first batch of that shape in the process, "
        "'repeated' = a second batch of the same shape; policies: 'torch' = torch's SDPA kernel choice throughout, "
        "'no-cudnn' = torch's choice for the prefill, every kernel but cuDNN's for decoding (the harness default)",
        "results": rows,
        "mean_decode_ms_per_step": {p: {s: mean_step(p, s) for s in ("new", "repeated")} for p in POLICIES},
    }
    atomic_write_json(args.out / "decode_kernels.json", result)
    print(f"wrote {args.out / 'decode_kernels.json'}")
    return result


if __name__ == "__main__":
    main()
