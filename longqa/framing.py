"""How a document and a question become an instruction, and how validate takes one apart again.

A template (from the recipe's [framing]) is `head {document} middle {question} tail`; `{title}` may
appear in the head. Rendering is plain concatenation, so parsing back is exact: the instruction must
start with the head and end with middle + question + tail.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Framed:
    instruction: str
    head_doc: str  # head + document: the part shared by every question on the document
    rest: str  # middle + question + tail


def _pieces(template: str, title: str) -> tuple[str, str, str]:
    i, j = template.index("{document}"), template.index("{question}")
    fmt = lambda s: s.format(title=title)  # noqa: E731 - {{ }} escapes and {title} as str.format does
    return fmt(template[:i]), fmt(template[i + len("{document}") : j]), fmt(template[j + len("{question}") :])


def head(template: str, title: str) -> str:
    """The text before the document (the same for every question on it)."""
    return _pieces(template, title)[0]


def rest(template: str, title: str, question: str) -> str:
    """The text after the document: middle + question + tail."""
    _, middle, tail = _pieces(template, title)
    return middle + question + tail


def render(template: str, title: str, document: str, question: str) -> Framed:
    head, middle, tail = _pieces(template, title)
    head_doc, rest = head + document, middle + question + tail
    return Framed(head_doc + rest, head_doc, rest)


def parse(template: str, title: str, question: str, instruction: str) -> tuple[str, str] | None:
    """(head + document, document) when `instruction` is exactly this framing around `question`, else None."""
    head, middle, tail = _pieces(template, title)
    rest = middle + question + tail
    if not instruction.startswith(head) or not instruction.endswith(rest) or len(instruction) < len(head) + len(rest):
        return None
    head_doc = instruction[: len(instruction) - len(rest)]
    return head_doc, head_doc[len(head) :]
