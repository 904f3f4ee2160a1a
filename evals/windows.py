"""Sliding windows over a token stream, as pure functions of (n_tokens, length, stride).

A window is `Window(start, end, first_scored)`: the model reads tokens [start, end) of the stream
(positions restart at 0 in every window) and token t is scored for start < first_scored <= t < end,
predicted from tokens [start, t) — so a scored token has t - start <= length - 1 tokens of context.
The first token of the stream is never scored (nothing precedes it; prepend a BOS to score it).

Three schemes (see `windows()`):
- `sliding` (Press et al. 2021 / Position Interpolation, the default): windows start every `stride`
  tokens; each scores only the tokens no earlier window scored, so every token is scored exactly
  once — in the first window with whatever context precedes it, later with at least length - stride.
- `all-tokens` (LongLoRA's eval.py): full windows start every `stride` tokens and each scores all of
  its tokens; tokens are scored up to ceil(length / stride) times, tokens after the last full window never.
- `disjoint` (lm-evaluation-harness rolling loglikelihood): consecutive windows share one token, so
  every token is scored exactly once and the context restarts every length - 1 tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

SCORING = ("sliding", "all-tokens", "disjoint")


class Window(NamedTuple):
    start: int
    end: int
    first_scored: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_scored(self) -> int:
        return self.end - self.first_scored


def _check(n_tokens: int, length: int, stride: int, max_stride: int) -> None:
    if length < 2:
        raise ValueError(f"window length must be at least 2 tokens, got {length}")
    if not 1 <= stride <= max_stride:
        raise ValueError(f"stride must be in [1, {max_stride}] for windows of {length} tokens, got {stride}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")


def sliding_windows(n_tokens: int, length: int, stride: int) -> Iterator[Window]:
    """Press et al. / PI: every token in [1, n_tokens) scored exactly once, with >= length - stride
    tokens of context outside the first window. Streams shorter than `length` give one window.
    The stride is at most length - 1: with stride = length a window's first token would have no context."""
    _check(n_tokens, length, stride, length - 1)
    if n_tokens < 2:
        return
    scored_until = 1
    start = 0
    while True:
        end = min(start + length, n_tokens)
        yield Window(start, end, scored_until)
        if end == n_tokens:
            return
        scored_until = end
        start += stride


def all_token_windows(n_tokens: int, length: int, stride: int) -> Iterator[Window]:
    """LongLoRA eval.py: full windows [s, s + length) for s = 0, stride, 2·stride, ... while they fit,
    each scoring all of its tokens after the first; a stream shorter than `length` is one window."""
    _check(n_tokens, length, stride, length)
    if n_tokens < 2:
        return
    if n_tokens <= length:
        yield Window(0, n_tokens, 1)
        return
    for start in range(0, n_tokens - length + 1, stride):
        yield Window(start, start + length, start + 1)


def disjoint_windows(n_tokens: int, length: int) -> Iterator[Window]:
    """lm-evaluation-harness rolling windows: sliding windows with stride length - 1, i.e. each window
    scores length - 1 new tokens given only the tokens of its own window."""
    return sliding_windows(n_tokens, length, length - 1)


def windows(n_tokens: int, length: int, stride: int, scoring: str = "sliding") -> list[Window]:
    if scoring == "sliding":
        return list(sliding_windows(n_tokens, length, stride))
    if scoring == "all-tokens":
        return list(all_token_windows(n_tokens, length, stride))
    if scoring == "disjoint":
        return list(disjoint_windows(n_tokens, length))
    raise ValueError(f"unknown scoring '{scoring}' (one of {', '.join(SCORING)})")
