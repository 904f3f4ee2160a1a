"""Token counts for LongQA, with the fast Rust tokenizer only (no torch: `llqa validate` uses it too).

`n_tokens` of an item = tokens(instruction) + tokens(output), each encoded alone without special tokens.
Instructions are `head + document + rest` (framing.py); for byte-level BPE tokenizers with the GPT-2
split regex (SmolLM2's, GPT-2's) tokens(head + document) + tokens(rest) is *exactly* tokens(instruction)
when the document ends in a non-space character and `rest` starts with whitespace: no pre-token of
that regex spans a non-space character followed by whitespace, and the regex looks only forward, so
`rest` splits the same alone as inside the whole. That lets a build count each document once (with its
head) however many questions it has. Other tokenizers are counted on whole instructions (exact, slower).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llqa.errors import LlqaError


@dataclass
class TokenCounter:
    tokenizer: object  # tokenizers.Tokenizer
    spec: str
    note: str
    sha256: str  # of tokenizer.json: which tokenizer the counts belong to
    batch: int = 16  # long documents per encode call: both cores busy, bounded memory
    splittable: bool = False  # counts of head+document and the rest of an instruction add up exactly

    def __post_init__(self) -> None:
        self.splittable = _splittable(json.loads(self.tokenizer.to_str()))  # once: the JSON is megabytes

    def count(self, texts: Sequence[str], progress=None) -> list[int]:
        """Token counts of `texts`, encoded in batches (the Rust tokenizer spreads a batch over cores)."""
        out: list[int] = []
        for i in range(0, len(texts), self.batch):
            chunk = list(texts[i : i + self.batch])
            out += [len(e.ids) for e in self.tokenizer.encode_batch_fast(chunk, add_special_tokens=False)]
            if progress is not None:
                progress(len(chunk))
        return out


def _splittable(cfg: dict) -> bool:
    """Byte-level BPE with the GPT-2 split regex (optionally with Digits) and no normalizer."""
    if cfg.get("normalizer") is not None:
        return False
    pre = cfg.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    others = [p for p in parts if p.get("type") not in ("ByteLevel", "Digits")]
    return len(byte_level) == 1 and byte_level[0].get("use_regex", True) and not others


def safe_split(head_doc: str, rest: str) -> bool:
    """The boundary conditions under which counts of the two parts add up (see the module doc)."""
    return bool(head_doc) and not head_doc[-1].isspace() and (not rest or rest[0].isspace())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_counter(spec: str) -> TokenCounter:
    """The tokenizer of `--tokenizer` (any `--model` value), loaded from its tokenizer.json."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from tokenizers import Tokenizer

    from llqa.models import files_location, resolve

    source = resolve(spec)
    if source.kind == "peft":
        local = Path(source.location) / "tokenizer.json"
        source = source if local.is_file() else source.base
    if source.kind == "random":
        source = resolve("smollm2-135m")
    where = files_location(source)
    path = Path(where) / "tokenizer.json"
    if not path.is_file() and not Path(where).exists():  # a hub id
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(where, "tokenizer.json", local_files_only=source.local_only))
        except Exception as e:  # missing file, offline, gated: one line either way
            raise LlqaError(
                f"--tokenizer {spec}: no tokenizer.json ({str(e).splitlines()[0]})",
                "use a model with a fast tokenizer (tokenizer.json), e.g. smollm2-135m",
            ) from None
    if not path.is_file():
        raise LlqaError(
            f"--tokenizer {spec}: {where} has no tokenizer.json",
            "use a model with a fast tokenizer (tokenizer.json), e.g. smollm2-135m",
        )
    return TokenCounter(Tokenizer.from_file(str(path)), spec, source.note, _sha256(path))
