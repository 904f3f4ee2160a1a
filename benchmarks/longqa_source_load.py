"""CPU seconds to load LongQA sources from local copies (reading + cleaning, no tokenizing).

    python benchmarks/longqa_source_load.py --source-dir ../shared/data [--import-torch]

Loads each source of benchmarks/longqa_build.toml with `longqa.sources.load_source` and prints wall and CPU
(`time.process_time`) seconds. `datasets` is imported first, outside the timing; `--import-torch` imports torch
first too, which separates the one-off torch import `datasets` makes for streamed datasets from the reading.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--recipe", type=Path, default=HERE / "longqa_build.toml")
    ap.add_argument("--import-torch", action="store_true")
    args = ap.parse_args()
    import datasets  # noqa: F401 - imported before timing

    if args.import_torch:
        import torch  # noqa: F401

    from longqa.sources import load_source

    sources = tomllib.loads(args.recipe.read_text())["sources"]
    for name, options in sources.items():
        t, c = time.perf_counter(), time.process_time()
        data = load_source(name, dict(options), args.source_dir)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"{name}: {len(data.documents)} documents, {len(data.qas)} pairs, wall {wall:.1f} s, cpu {cpu:.1f} s")


if __name__ == "__main__":
    main()
