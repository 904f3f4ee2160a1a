"""The shapes LongQA data passes through, and the text checks build and validate share.

A source module yields `Document`s and `QA`s (real human questions and answers); the build frames them
into `item` dicts with the fields of `ITEM_FIELDS` (LongAlpaca's `instruction`/`output` plus metadata).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

CATEGORIES = ("summary", "relation", "character", "detail", "generation")
DOC_TYPES = ("paper", "novel")
SPLITS = ("train", "test")
# How an answer relates to the document: "extractive" answers are verbatim spans of it (checked by
# validate); "multiple_choice" answers repeat one option of the question by design.
ANSWER_TYPES = ("abstractive", "extractive", "yes_no", "multiple_choice", "summary")

# Every item field and its JSON type, in the order they are written.
ITEM_FIELDS: dict[str, type] = {
    "id": str,
    "instruction": str,
    "output": str,
    "category": str,
    "doc_type": str,
    "source": str,
    "doc_id": str,
    "title": str,
    "question": str,
    "answer_type": str,
    "n_tokens": int,
    "split": str,
}


@dataclass(frozen=True)
class Document:
    doc_id: str  # stable id from the source (or a content hash where the source has none)
    title: str  # "" when the source has none (items then say hygiene.UNTITLED)
    text: str
    doc_type: str  # "paper" or "novel"
    source: str


@dataclass(frozen=True)
class QA:
    doc_id: str
    question: str
    answer: str
    answer_type: str = "abstractive"
    category: str | None = None  # set by the source when its nature fixes it (summaries); else by rules
    source: str = ""


@dataclass
class SourceData:
    """What one source module returns: its documents, its QA pairs, and where they came from."""

    name: str
    origin: str  # hub id or local directory
    revision: str  # hub commit sha, or "sha256:<digest of the local files read>"
    documents: dict[str, Document] = field(default_factory=dict)
    qas: list[QA] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped or repaired and why, for the manifest
    dropped: Counter = field(default_factory=Counter)  # reason -> QA pairs dropped by the source's rules


def content_id(*parts: str, n: int = 16) -> str:
    """A short stable id from text, for sources without ids."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:n]


# --------------------------------------------------------------------------- text hygiene

# UTF-8 decoded as Latin-1/cp1252: a lead byte as one of Â..ô, then continuation bytes shown as
# C1 controls, Latin-1 symbols or the cp1252 punctuation that occupies 0x80-0x9F.
_CP1252_SPECIALS = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_MOJIBAKE = re.compile(f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_SPECIALS}]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _as_bytes(s: str) -> bytes | None:
    out = bytearray()
    for ch in s:
        o = ord(ch)
        if o < 256:
            out.append(o)
        else:
            try:
                out += ch.encode("cp1252")
            except UnicodeEncodeError:
                return None
    return bytes(out)


def _repair(match: re.Match) -> str:
    raw = _as_bytes(match.group())
    if raw is None:
        return match.group()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return match.group()


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 read as Latin-1/cp1252 ("â\\x80\\x94" -> "—"); runs that do not decode stay as they are."""
    return _MOJIBAKE.sub(_repair, text)


def find_mojibake(text: str) -> str | None:
    """The first run that is UTF-8 read as Latin-1/cp1252 (it would decode), else None."""
    for m in _MOJIBAKE.finditer(text):
        if _repair(m) != m.group():
            return m.group()
    return "\ufffd" if "\ufffd" in text else None


def find_control(text: str) -> str | None:
    m = _CONTROL.search(text)
    return m.group() if m else None


def clean_text(text: str) -> str:
    """What every source applies to its text: repaired mojibake, NFC, no control characters, \\n line
    ends, no trailing spaces on lines, stripped. Documents then end in a non-space character, which makes
    token counts of framed instructions decompose exactly (see tokens.py)."""
    text = fix_mojibake(text).replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.strip()


# --------------------------------------------------------------------------- question/answer checks

_WORD = re.compile(r"\w+")


def norm_words(text: str) -> str:
    """Lower-case words joined by single spaces: the key for near-duplicate and containment checks."""
    return " ".join(_WORD.findall(text.lower()))


def is_multiple_choice(question: str) -> bool:
    """Questions that list lettered options, e.g. "(A) ... (B) ..." or "A. ... B. ..."."""
    return bool(re.search(r"(\(A\)|\bA\.).*(\(B\)|\bB\.)", question, re.S))


def answer_in_question(question: str, answer: str) -> bool:
    """True when the whole answer (as words) appears in the question: the question gives it away.
    Questions that offer the answer as one of their choices are exempt: lettered options, "True or
    False", and "X or Y?" where the answer is one side of the "or"."""
    a = norm_words(answer)
    if not a or is_multiple_choice(question):
        return False
    q = f" {norm_words(question)} "
    if f" {a} " not in q:
        return False
    return not (f" or {a} " in q or f" {a} or " in q)


def extractive_spans(answer: str) -> list[str]:
    """The spans of an extractive answer (several spans are joined with "; ")."""
    return [s for s in (p.strip() for p in answer.split("; ")) if s]


def norm_space(text: str) -> str:
    return " ".join(text.split())
