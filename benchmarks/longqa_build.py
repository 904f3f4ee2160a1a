"""Benchmark `llqa build` and `llqa validate` on local copies (CPU work: tokenization, dedup, checks).

    python benchmarks/longqa_build.py --source-dir ../shared/data --out benchmarks/results/longqa_build

Builds with benchmarks/longqa_build.toml (or --recipe), then validates with the token recount, and
writes results.json: wall seconds of each, items, documents tokenized, tokens counted, tokens per
second, CPU count and the exact commands. Run it on the machine whose numbers you report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--recipe", default=str(HERE / "longqa_build.toml"))
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and the built set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="fail on unfilled quotas instead of --allow-short")
    args = ap.parse_args()

    from longqa.build import build
    from longqa.recipe import load_recipe
    from longqa.validate import validate

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "set"
    shutil.rmtree(data, ignore_errors=True)
    recipe = load_recipe(args.recipe)
    t0 = time.perf_counter()
    result = build(recipe, data, source_dir=args.source_dir, seed=args.seed, allow_short=not args.strict)
    build_s = time.perf_counter() - t0
    items = [json.loads(x) for s in ("train", "test") for x in (data / f"{s}.jsonl").open(encoding="utf-8")]
    t0 = time.perf_counter()
    report = validate(data)
    validate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "cli", "validate", str(data)], cwd=ROOT, capture_output=True)
    validate_cli_s = time.perf_counter() - t0
    doc_tokens = {}
    for it in items:  # each distinct document's item with the fewest tokens ~ its document length
        doc_tokens[it["doc_id"]] = min(doc_tokens.get(it["doc_id"], 1 << 62), it["n_tokens"])
    res = {
        "what": "llqa build + llqa validate (with n_tokens recount) on local copies",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "recipe": recipe.name,
        "quota_total": recipe.total,
        "items": len(items),
        "cells": result.manifest["cells"],
        "documents": len(doc_tokens),
        "document_tokens": sum(doc_tokens.values()),
        "item_tokens": sum(it["n_tokens"] for it in items),
        "build_s": round(build_s, 2),
        "validate_s": round(validate_s, 2),
        "validate_cli_s": round(validate_cli_s, 2),
        "validate_ok": report.ok,
        "validate_cli_exit": cli.returncode,
        "build_tokens_per_s": round(sum(doc_tokens.values()) / build_s),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 1),  # other work on the machine slows both steps
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "cells"}, indent=2))


if __name__ == "__main__":
    main()
