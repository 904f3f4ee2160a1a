"""Rules that catch bad source items before they are framed: each one states what it detects and what happens
(repaired, or dropped and counted in the manifest's `dropped` under the reason named here).

Documents
- Markup is not text: HTML comments (`<!-- $Id: header.txt ... -->`, left at the top of some Project Gutenberg
  files) are removed from documents, so they can never become a title (`strip_markup`).
- A paper's first line is its title only when it is not a section heading: "Introduction", "1 INTRODUCTION",
  "2 MODELLING UNCERTAINTIES FROM DATA" (a known heading word, or any numbered line) are headings, and such a
  paper has no title (`paper_title`). Papers are framed without their title, so nothing is lost; the item's
  `title` says `(untitled)`. A recipe whose framing names the title drops such documents (`no_title`).
- A story's title is its first line of text (`book_title`).

Questions and answers (build.py applies these to each document's pairs in the source's own order)
- Misaligned answers (`misaligned_document`, every pair of the document dropped): a document with at least
  `MIN_PAIRS` pairs whose answers fit the neighbouring question (the next, or the previous one) clearly better
  than their own: `shifted >= own + MARGIN` and `shifted >= RATIO * own`, where `fit(q, a)` counts the content
  words (stemmed) question and answer share, plus one when both or neither are yes/no. A source that lost or
  duplicated one entry of a list shifts every answer after it by one; nothing else about such a document
  looks wrong.
- The same question twice on one document (`repeated_question`): the first occurrence in the source's order
  is kept — the first annotator's answer, as QASPER's own loader keeps the first answerable annotation; the
  later ones are dropped. An exact repeat (same answer) counts as `duplicate_question`. Never decided by how
  the answers sort.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

UNTITLED = "(untitled)"  # the `title` of an item whose document has none; paper framings do not show it

# --------------------------------------------------------------------------- documents

_COMMENT = re.compile(r"<!--.*?-->", re.S)


def strip_markup(text: str) -> str:
    """The text without HTML comments (markup left in some sources' plain text)."""
    return _COMMENT.sub("", text) if "<!--" in text else text


_HEADING_WORDS = (
    "abstract|introduction|background|preliminaries|related work|overview|motivation|method|methods|"
    "methodology|approach|experiments|results|discussion|conclusion|conclusions"
)
_HEADING = re.compile(rf"^((\d+(\.\d+)*\.?|[IVX]+\.)\s+\S.*|({_HEADING_WORDS})\.?)$", re.I)


def first_line(text: str, limit: int = 100) -> str:
    """The first non-empty line, spaces collapsed, cut at a word boundary near `limit` characters."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def is_heading(line: str) -> bool:
    return bool(_HEADING.match(" ".join(line.split())))


def paper_title(text: str) -> str:
    """The paper's first line when it is a title; "" when it is a section heading (the source dropped the title)."""
    line = first_line(text)
    return "" if not line or is_heading(line) else line


def book_title(text: str) -> str:
    return first_line(text)


# --------------------------------------------------------------------------- misaligned answers

MIN_PAIRS = 6  # a shift has to show over at least five neighbouring pairs; fewer short pairs are noise
MARGIN = 3
RATIO = 1.5
_STOP = frozenset(
    "the a an of to in on for and or is are was were be been being by with what which who whom whose how why "
    "when where does do did that this these those they their them it its as at from into about than then there "
    "here have has had not can could would should will his her he she we our you your one".split()
)
_YES_NO_Q = re.compile(r"^\W*(do|does|did|is|are|was|were|can|could|has|have|had|will|would|should)\b", re.I)
_YES_NO_A = re.compile(r"^\W*(yes|no)\b", re.I)


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "ed", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z][a-z0-9-]+", text.lower()) if w not in _STOP and len(w) > 2}


def fit(question: str, answer: str) -> int:
    """How well an answer fits a question: shared content words, +1 when both or neither are yes/no."""
    shared = len(content_words(question) & content_words(answer))
    return shared + int(bool(_YES_NO_Q.match(question)) == bool(_YES_NO_A.match(answer)))


def misaligned(questions: Sequence[str], answers: Sequence[str]) -> bool:
    """True when the answers fit their neighbouring questions clearly better than their own (module docstring)."""
    return len(questions) >= MIN_PAIRS and any(
        shifted >= own + MARGIN and shifted >= RATIO * own for own, shifted in shift_scores(questions, answers)
    )


def shift_scores(questions: Sequence[str], answers: Sequence[str]) -> list[tuple[int, int]]:
    """(own, shifted) fit sums for answers read against the next question and against the previous one, each
    over the n - 1 pairs where the shifted pairing exists."""
    n = len(questions)
    out = []
    for shift, idx in ((1, range(1, n)), (-1, range(n - 1))):
        own = sum(fit(questions[i], answers[i]) for i in idx)
        out.append((own, sum(fit(questions[i], answers[i - shift]) for i in idx)))
    return out


# --------------------------------------------------------------------------- repeated questions


def first_answers(pairs: Sequence[tuple[str, str]], key) -> tuple[list[int], Counter]:
    """Indices of the pairs kept when a question repeats on one document (the first in source order), and the
    counts of those dropped: `duplicate_question` (same answer) or `repeated_question` (another answer)."""
    first: dict[str, str] = {}
    kept, dropped = [], Counter()
    for i, (question, answer) in enumerate(pairs):
        k = key(question)
        if k not in first:
            first[k] = answer
            kept.append(i)
        elif first[k] == answer:
            dropped["duplicate_question"] += 1
        else:
            dropped["repeated_question"] += 1
    return kept, dropped
