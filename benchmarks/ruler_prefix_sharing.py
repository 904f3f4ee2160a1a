"""How much RULER prefill prefix reuse could save, measured on the prompts themselves (CPU, no model run).

Prefix reuse computes the KV cache of a prompt's leading tokens once for every prompt that starts with
them. For each RULER task and length this script builds `--samples` prompts exactly as `llqa eval ruler`
does (the model's tokenizer, RULER's templates, the `--haystack` essays) and counts, as a share of all
prompt tokens:
- `batch_common`: the prefix common to all the cell's prompts, reused by every prompt but the first
  (what one shared cache per batch gives);
- `radix`: each prompt's longest common prefix with any earlier prompt (what a radix-tree cache over the
  whole run gives, the most any prefix reuse can save).
Token shares bound the FLOPs saved from above: the tokens after a reused prefix still attend to it.

    python benchmarks/ruler_prefix_sharing.py --samples 20 --lengths 4096,32768 \\
        --haystack ../shared/data/paul_graham_essays/PaulGrahamEssays --out benchmarks/results/ruler-prefix-sharing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from evals.generation import prompt_frame  # noqa: E402
from evals.ruler import SYNTHETIC_TASKS, RulerBuilder, read_essays  # noqa: E402
from llqa.io import atomic_write_json  # noqa: E402
from llqa.models import load_tokenizer, resolve  # noqa: E402


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def measure(prompts: list[list[int]]) -> dict[str, int]:
    common = min((common_prefix(prompts[0], p) for p in prompts[1:]), default=0)
    radix = sum(max(common_prefix(prompts[j], prompts[i]) for j in range(i)) for i in range(1, len(prompts)))
    return {"tokens": sum(map(len, prompts)), "batch_common": common * (len(prompts) - 1), "radix": radix}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer builds the prompts")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--lengths", default="4096,32768")
    p.add_argument("--tasks", default=",".join(SYNTHETIC_TASKS))
    p.add_argument("--haystack", required=True, help="the essays folder (RULER's Paul Graham essays)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]
    tok = load_tokenizer(resolve(args.model))
    essays, _ = read_essays(args.haystack, 8 * max(lengths) + 10_000)
    builder = RulerBuilder(tok, prompt_frame(tok, False), essays=essays, qa={})
    rows = []
    for length in lengths:
        for task in args.tasks.split(","):
            counts = measure([builder.build(task, length, i, 0).ids for i in range(args.samples)])
            rows.append({"task": task, "length": length, **counts})
            share = {k: round(100 * counts[k] / counts["tokens"], 1) for k in ("batch_common", "radix")}
            print(f"{task:16s} {length:6d}  batch-common {share['batch_common']:5.1f}%  radix {share['radix']:5.1f}%")
    total = {k: sum(r[k] for r in rows) for k in ("tokens", "batch_common", "radix")}
    shares = {k: round(100 * total[k] / total["tokens"], 1) for k in ("batch_common", "radix")}
    print(f"all: batch-common {shares['batch_common']}%, radix {shares['radix']}% of {total['tokens']:,} prompt tokens")
    result = {"settings": {**vars(args), "out": str(args.out)}, "rows": rows, "total": total, "percent": shares}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "prefix_sharing.json", result)
    return result


if __name__ == "__main__":
    main()
