"""Training data: documents packed into ctx-token sequences (`llqa train`), prompt/answer pairs (`llqa sft`).

Continued pre-training (`train`), as LongLoRA's fine-tune.py on RedPajama: each document is tokenized
(with the tokenizer's own special tokens, e.g. Llama's BOS), followed by EOS, concatenated in reading
order and cut into sequences of exactly ctx tokens; the tail shorter than ctx is dropped. Every token
is a label (the loss crosses document boundaries, as in the paper). Packing stops once the run has
the sequences it needs (max_steps × batch); fewer are repeated in epochs. The packed token ids are
stored in the run directory (`data/packed.bin`, uint32) so a resumed run reads exactly the same
sequences without tokenizing again. Files are read by `llqa.io` as every command reads text: UTF-8 with
universal newlines (CRLF and CR as LF); a file that is not UTF-8 is refused, naming the byte offset.

Supervised fine-tuning (`sft`): items with `instruction` and `output` (LongAlpaca / LongQA; a
non-empty `input` field is appended to the instruction after a blank line, as in Alpaca). The prompt
is the instruction in the model's chat template (one user turn + generation prompt) or LongLoRA's
`[INST]{instruction}[/INST]`; the answer is the output followed by the template's end of turn (chat)
or EOS (inst). Labels are -100 on the prompt: the loss is on answer tokens only.
Items longer than ctx: the middle of the instruction is cut (its first and last halves are kept,
so a question at either end survives) until prompt + answer fit; an item whose answer plus the
template alone do not fit is skipped. Both are counted and reported. The prompt formatting and the
cut are `llqa.prompts` (shared with `llqa eval longqa`, which asks the same prompts).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llqa.errors import LlqaError
from llqa.hub import OFFLINE_FIX, hub_reachable
from llqa.io import TEXT_READING, atomic_write_json, read_text, read_text_lines
from llqa.prompts import IGNORE_INDEX, PromptTemplate, sft_instruction

TEXT_SUFFIXES = {".txt", ".md", ".tex", ".text", ".rst"}
JSON_SUFFIXES = {".jsonl", ".json"}
TABLE_SUFFIXES = {".parquet"}
DATA_SUFFIXES = TEXT_SUFFIXES | JSON_SUFFIXES | TABLE_SUFFIXES

# --------------------------------------------------------------------------- reading


def data_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named by `--data`: files as given, folders walked recursively (sorted) for known suffixes."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
            if not found:
                raise LlqaError(
                    f"--data {p}: the folder holds no {'/'.join(sorted(DATA_SUFFIXES))} files",
                    "point --data at text, jsonl or parquet files",
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise LlqaError(f"--data {p}: no such file or directory", "check the path")
    return out


def check_local_data(task: str, paths: Iterable[str | os.PathLike]) -> None:
    """Read what `--data` names before any model loads, so a missing file, invalid JSON or a file that is not
    UTF-8 stops the run at once: sft items are parsed whole (cheap beside a model load), train files found."""
    if task == "sft":
        for _ in read_sft_items(paths):
            pass
    else:
        data_files(paths)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a .jsonl (one object a line), .json (a list of objects) or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        yield from pd.read_parquet(path).to_dict("records")
        return
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path} is not valid JSON ({e})", "fix the file or convert it to jsonl") from None
        if not isinstance(data, list):
            raise LlqaError(
                f"{path} holds a JSON {type(data).__name__}, not a list of records",
                "use a JSON list of objects or jsonl",
            )
        yield from data
        return
    for n, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise LlqaError(f"{path}:{n} is not valid JSON ({e})", "fix or remove that line") from None


def read_documents(paths: Iterable[str | os.PathLike], text_field: str = "text") -> Iterator[str]:
    """Document texts of local files: a text file is one document (`llqa.io.read_text`: UTF-8 with universal
    newlines, non-UTF-8 refused as the evals refuse it); jsonl/json/parquet give one per record."""
    for path in data_files(paths):
        if path.suffix.lower() in JSON_SUFFIXES | TABLE_SUFFIXES:
            for n, rec in enumerate(read_records(path), 1):
                if not isinstance(rec, dict) or text_field not in rec:
                    raise LlqaError(
                        f"{path} record {n} has no field '{text_field}'", "name the text column with --text-field"
                    )
                if rec[text_field]:
                    yield str(rec[text_field])
        else:
            yield read_text(path)


def hub_records(dataset: str, config: str | None, split: str, streaming: bool) -> Iterable[dict[str, Any]]:
    """Records of a hub dataset. Offline, only a copy in the local cache can load (with HF_HUB_OFFLINE=1
    set, as datasets requires); otherwise the failure is one clear line at once instead of retries."""
    import datasets

    from llqa.hub import hub_offline_by_env

    online = hub_reachable()
    if not online and not hub_offline_by_env():
        raise LlqaError(
            f"dataset '{dataset}' needs the hub, which cannot be reached",
            OFFLINE_FIX + " with --data (or set HF_HUB_OFFLINE=1 to read the local cache)",
        )
    try:
        return datasets.load_dataset(dataset, config, split=split, streaming=streaming and online)
    except Exception as e:  # datasets raises many types for missing/offline data
        if not online:
            raise LlqaError(
                f"dataset '{dataset}' is not in the local cache and the hub cannot be reached",
                OFFLINE_FIX + " with --data",
            ) from None
        raise LlqaError(
            f"could not load dataset '{dataset}' ({type(e).__name__}: {str(e).splitlines()[0]})",
            "check the dataset id, --dataset-config and --split",
        ) from None


def hub_documents(dataset: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    for n, rec in enumerate(hub_records(dataset, config, split, streaming=True), 1):
        if text_field not in rec:
            raise LlqaError(
                f"dataset '{dataset}' record {n} has no field '{text_field}' (fields: {', '.join(rec)})",
                "name the text column with --text-field",
            )
        if rec[text_field]:
            yield str(rec[text_field])


# --------------------------------------------------------------------------- packing (train)


def pack(token_lists: Iterable[list[int]], ctx: int, limit: int | None = None) -> Iterator[np.ndarray]:
    """Concatenate token lists and cut them into sequences of exactly `ctx` tokens (the tail is dropped).

    Pure: the concatenation of the output is a prefix of the concatenation of the input.
    """
    buf: list[int] = []
    produced = 0
    for ids in token_lists:
        buf.extend(ids)
        while len(buf) >= ctx:
            yield np.asarray(buf[:ctx], dtype=np.uint32)
            del buf[:ctx]
            produced += 1
            if limit is not None and produced >= limit:
                return


def document_tokens(texts: Iterable[str], tokenizer, batch: int = 64) -> Iterator[list[int]]:
    """Token ids of each document (tokenizer's special tokens, e.g. BOS) followed by EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LlqaError("the tokenizer has no EOS token to join documents with", "use a model whose tokenizer has one")
    chunk: list[str] = []

    def flush():
        for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]:
            yield [*ids, eos]

    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


@dataclass
class PackedData:
    """Packed sequences in a uint32 file of the run directory, read through a memory map."""

    path: Path
    ctx: int

    def __post_init__(self):
        n = self.path.stat().st_size // (4 * self.ctx)
        self.tokens = np.memmap(self.path, dtype=np.uint32, mode="r", shape=(n, self.ctx))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.tokens[i], dtype=np.int64)
        return ids, ids  # every token is a label


def build_packed(
    texts: Iterable[str], tokenizer, ctx: int, needed: int, out_dir: Path, meta: dict[str, Any]
) -> tuple[PackedData, dict[str, Any]]:
    """Pack `texts` into at most `needed` sequences under out_dir (reused when `meta` matches)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = out_dir / "packed.bin", out_dir / "packed.json"
    if path.is_file() and meta_path.is_file():
        saved = json.loads(meta_path.read_text())
        if saved.get("source") == meta:
            return PackedData(path, ctx), saved
    tmp = out_dir / f".packed.{os.getpid()}.tmp"
    n = 0
    with open(tmp, "wb") as f:
        for seq in pack(document_tokens(texts, tokenizer), ctx, limit=needed):
            f.write(seq.tobytes())
            n += 1
        f.flush()
        os.fsync(f.fileno())
    if n == 0:
        tmp.unlink()
        raise LlqaError(
            f"the data holds fewer than --ctx {ctx} tokens: no training sequence can be packed",
            "add data or lower --ctx",
        )
    os.replace(tmp, path)
    info = {"source": meta, "sequences": n, "tokens": n * ctx, "needed": needed, "text_files": TEXT_READING}
    atomic_write_json(meta_path, info)
    return PackedData(path, ctx), info


# --------------------------------------------------------------------------- sft


def read_sft_items(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file, record number, record) of LongAlpaca/LongQA json/jsonl files; a directory means its train.jsonl
    (a LongQA build) or, failing that, every json/jsonl file in it."""
    for p in map(Path, paths):
        if p.is_dir():
            files = (
                [p / "train.jsonl"]
                if (p / "train.jsonl").is_file()
                else sorted(f for f in p.rglob("*") if f.suffix.lower() in JSON_SUFFIXES)
            )
            if not files:
                raise LlqaError(
                    f"--data {p}: no train.jsonl (LongQA build) or json/jsonl files in it",
                    "point --data at a LongQA build directory or a LongAlpaca json/jsonl file",
                )
        elif p.is_file():
            files = [p]
        else:
            raise LlqaError(f"--data {p}: no such file or directory", "check the path")
        for f in files:
            if f.suffix.lower() not in JSON_SUFFIXES:
                raise LlqaError(f"--data {f}: sft data must be .json or .jsonl", "convert it to jsonl")
            for n, rec in enumerate(read_records(f), 1):
                yield str(f), n, rec


@dataclass
class SftData:
    items: list[tuple[np.ndarray, np.ndarray]]
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.items)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[i]


def build_sft(records: Iterable[tuple[str, int, Any]], tokenizer, template: str, ctx: int) -> SftData:
    tpl = PromptTemplate(tokenizer, template)
    items, truncated, skipped = [], 0, 0
    for where, n, rec in records:
        instruction, output = sft_instruction(rec, f"{where} record {n}")
        enc = tpl.encode(instruction, output, ctx)
        if enc is None:
            skipped += 1
            continue
        truncated += enc[2] == "truncated"
        items.append(enc[:2])
    if not items:
        raise LlqaError(
            "no sft item fits: the data is empty or every answer is longer than --ctx", "check --data, or raise --ctx"
        )
    stats = {
        "items": len(items),
        "truncated_middle": truncated,
        "skipped_too_long": skipped,
        "template": tpl.kind,
        "answer_tokens": int(sum((lab != IGNORE_INDEX).sum() for _, lab in items)),
        "tokens": int(sum(len(ids) for ids, _ in items)),
    }
    return SftData(items, stats)


# --------------------------------------------------------------------------- order and batches


def sample_index(position: int, n: int, seed: int, shuffle: bool) -> int:
    """The item used at global sample `position`: epochs of `n` items, each epoch its own seeded permutation.

    A pure function of (position, n, seed), so a resumed run reads the same items as an uninterrupted one.
    """
    epoch, offset = divmod(position, n)
    if not shuffle:
        return offset
    return int(_epoch_order(n, seed, epoch)[offset])


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def collate(items: list[tuple[np.ndarray, np.ndarray]], pad_id: int, multiple: int = 1):
    """(input_ids, labels, attention_mask or None) tensors. Rows are right-padded (pad id, label -100, mask 0)
    to the longest row rounded up to `multiple`; without any padding the mask is None (plain causal)."""
    import torch

    longest = max(len(ids) for ids, _ in items)
    width = -(-longest // multiple) * multiple
    if all(len(ids) == width for ids, _ in items):
        return (
            torch.as_tensor(np.stack([i for i, _ in items])),
            torch.as_tensor(np.stack([lab for _, lab in items])),
            None,
        )
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, (i, lab) in enumerate(items):
        ids[r, : len(i)] = torch.as_tensor(i)
        labels[r, : len(lab)] = torch.as_tensor(lab)
        mask[r, : len(i)] = 1
    return ids, labels, mask
