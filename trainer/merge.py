"""`llqa merge RUN_DIR --out DIR`: a standalone Hugging Face model from a training run.

The run's adapter is loaded onto its base at the RoPE it was trained with (method, factor and θ from
`llqa_model.json`), the LoRA matrices are merged into the weights and PEFT's trained copies of the
embeddings and norms (LoRA+) replace the originals (`merge_and_unload`); tied input/output
embeddings stay tied. The saved `config.json` carries that RoPE twice: transformers 5's `rope_parameters`
and the legacy `rope_scaling` + `rope_theta` that transformers 4.x, vLLM and other loaders read, with
`max_position_embeddings` as the method defines it (the trained context; the original for dynamic NTK),
so plain `transformers.AutoModelForCausalLM.from_pretrained(DIR)` runs at the new context on either
stack. Its `llqa_model.json` keeps the RoPE record (the original included), so extending the merged model
further re-derives from the original. The directory is written under a temporary name
(`.NAME.merging-PID`) and renamed, so a crash never leaves half a model; the next merge into the same place
removes what a killed one left. `--out` may not be the run, lie inside it or contain it (replacing it would
destroy the run).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from llqa.errors import LlqaError
from llqa.io import atomic_write_json, remove_dead_leftovers, writable_dir
from llqa.models import RUN_FILE, add_legacy_rope_keys, load_model


def check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Refuse an --out that would destroy the run or a folder the user did not offer, before anything loads."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents or target in run.parents:
        where = "is" if target == run else "lies inside" if run in target.parents else "contains"
        raise LlqaError(
            f"--out {out} {where} the run {run_dir} being merged", "pass an --out outside the run directory"
        )
    writable_dir(out, "--out", create=False)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise LlqaError(f"--out {out} exists and is not empty", "pick another --out or pass --overwrite")


def merge_run(
    run_dir: str | Path, out: str | Path, dtype: str = "auto", device: str = "cpu", overwrite: bool = False
) -> Path:
    """Merge the run in `run_dir` into a standalone model directory `out`; returns `out`."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / RUN_FILE).is_file():
        raise LlqaError(
            f"{run_dir} is not an llqa training run ({RUN_FILE} missing)",
            "pass the --out directory of a finished `llqa train` / `llqa sft`",
        )
    check_out(run_dir, out, overwrite)
    loaded = load_model(str(run_dir), dtype=dtype, device=device)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    run = json.loads((run_dir / RUN_FILE).read_text())
    writable_dir(out.parent, "--out")
    remove_dead_leftovers(out.parent, f".{out.name}.merging-")  # a killed merge's half model
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    try:
        model.save_pretrained(tmp)
        add_legacy_rope_keys(tmp / "config.json")
        loaded.tokenizer.save_pretrained(tmp)
        record = {**run, "rope": loaded.rope.record(), "merged_from": str(run_dir.resolve())}
        atomic_write_json(tmp / RUN_FILE, record)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
