"""LongQA: build and validate the long-document QA set (LongLoRA's SFT data) from public human-annotated
sources — NarrativeQA, QASPER, arXiv summarization, L-Eval and LongAlpaca-12k.

`build.build(...)` turns a recipe (`recipes/*.toml`) into train/test jsonl + parquet, a manifest and a
dataset card; `validate.validate(path)` proves such a directory sound. No typer here: `cli.longqa` wraps both.
"""
