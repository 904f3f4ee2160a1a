"""Sliding windows over a token stream, as pure functions of (n_tokens, length, stride).

A window is `Window(start, end, first_scored)`: the model reads tokens [start, end) of the stream
(positions restart at 0 in every window) and token t is scored for start < first_scored <= t < end,
predicted from tokens [start, t) — so a scored token has t - start <= length - 1 tokens of context.
The first token of the stream is never scored (nothing precedes it; prepend a BOS to score it).

Three schemes (see `windows()`):
- `sliding` (Press et al. 2021 / Position Interpolation, the default): windows start every `stride`
  tokens; each scores only the tokens no earlier window scored, so every token is scored exactly
  once — in the first window with whatever context precedes it, later with at least length - stride.
- `all-tokens`: exactly the windows of LongLoRA's eval.py (`get_as_batch`): starts
  `range(0, n - length, stride)` without the last one, each window `length` tokens scoring all of its
  tokens after the first; a stream of at most length + stride tokens gets no window at all.
- `disjoint`: exactly lm-evaluation-harness's `loglikelihood_rolling` windows
  (`get_rolling_token_windows(context_len=1)` + `make_disjoint_window`, max_length = length - 1), on a
  stream whose first token is the harness's prefix token (a BOS): every token is scored exactly once,
  the context restarts every length - 1 tokens, and the last window is filled back to `length` tokens
  (its tokens keep up to length - 1 tokens of context, as in the harness).

A document *fills* a length when one of its windows is `length` tokens long (`fills`): sliding and
disjoint need at least `length` tokens, all-tokens more than length + stride.
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
    """LongLoRA eval.py's windows: `all_ix = list(range(0, len(data) - seq_length, sliding_window))`,
    then `all_ix.pop()`; window [s, s + length) scores its tokens s+1 .. s+length-1 (labels = inputs).
    The last start that fits is left out as eval.py does (it also asserts s + length + 1 <= n, for the
    targets of its accuracy), so a stream of at most length + stride tokens gets no window (eval.py fails
    on it)."""
    _check(n_tokens, length, stride, length)
    starts = list(range(0, n_tokens - length, stride))[:-1]
    for start in starts:
        yield Window(start, start + length, start + 1)


def disjoint_windows(n_tokens: int, length: int) -> Iterator[Window]:
    """lm-evaluation-harness `loglikelihood_rolling` with max_length = length - 1: the first window reads
    [0, min(length, n)) and scores from token 1 (the harness's prefix token is token 0 here); each later
    window scores the next length - 1 tokens (fewer at the end) given only the tokens of its own window,
    which ends at the last scored token and starts length tokens before that end, so the last window
    reaches back into tokens already scored (the harness fills it to max_length inputs)."""
    _check(n_tokens, length, length - 1, length - 1)
    if n_tokens < 2:
        return
    end = min(length, n_tokens)
    yield Window(0, end, 1)
    while end < n_tokens:
        scored_from, end = end, min(end + length - 1, n_tokens)
        yield Window(end - length, end, scored_from)


def fills(n_tokens: int, length: int, stride: int, scoring: str = "sliding") -> bool:
    """Whether `windows(n_tokens, length, stride, scoring)` has a window of exactly `length` tokens: whether
    the stream is long enough to be measured at this length."""
    if scoring == "all-tokens":
        return n_tokens - length > stride
    return n_tokens >= length


def windows(n_tokens: int, length: int, stride: int, scoring: str = "sliding") -> list[Window]:
    if scoring == "sliding":
        return list(sliding_windows(n_tokens, length, stride))
    if scoring == "all-tokens":
        return list(all_token_windows(n_tokens, length, stride))
    if scoring == "disjoint":
        return list(disjoint_windows(n_tokens, length))
    raise ValueError(f"unknown scoring '{scoring}' (one of {', '.join(SCORING)})")
