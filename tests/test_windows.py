"""The window generator: which tokens each scheme scores, how often, with how much context."""

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.windows import Window, all_token_windows, disjoint_windows, sliding_windows, windows


def scored(ws):
    """token index -> list of context sizes it was scored with."""
    out: dict[int, list[int]] = {}
    for w in ws:
        for t in range(w.first_scored, w.end):
            out.setdefault(t, []).append(t - w.start)
    return out


def test_gold_34_tokens_length_8_stride_3():
    ws = list(sliding_windows(34, 8, 3))
    assert ws[0] == Window(0, 8, 1)
    assert ws[1] == Window(3, 11, 8)
    assert ws[-1] == Window(27, 34, 32)
    assert [w.start for w in ws] == list(range(0, 28, 3))
    s = scored(ws)
    assert sorted(s) == list(range(1, 34))  # every token but the first, each ...
    assert all(len(c) == 1 for c in s.values())  # ... exactly once
    assert max(c[0] for c in s.values()) <= 7  # never more than L - 1 context
    assert all(c[0] >= 8 - 3 for t, c in s.items() if t >= 8)  # outside the first window: >= L - S


@given(n=st.integers(0, 300), length=st.integers(2, 64), data=st.data())
def test_sliding_scores_every_token_once(n, length, data):
    stride = data.draw(st.integers(1, length - 1))
    ws = list(sliding_windows(n, length, stride))
    s = scored(ws)
    assert sorted(s) == list(range(1, n))
    assert all(len(c) == 1 for c in s.values())
    assert all(w.length <= length and w.start >= 0 and w.end <= n for w in ws)
    for t, (ctx,) in s.items():
        assert 1 <= ctx <= length - 1
        assert ctx == t or ctx >= length - stride  # first-window tokens see everything before them
        assert ctx <= length - 1
    assert all(b.start - a.start == stride for a, b in zip(ws, ws[1:], strict=False))


@given(n=st.integers(0, 300), length=st.integers(2, 64), data=st.data())
def test_all_tokens_scores_whole_windows(n, length, data):
    stride = data.draw(st.integers(1, length))
    ws = list(all_token_windows(n, length, stride))
    assert all(w.first_scored == w.start + 1 for w in ws)
    assert all(1 <= t - w.start <= length - 1 for w in ws for t in range(w.first_scored, w.end))
    if n >= length:
        assert all(w.length == length for w in ws)
        assert ws[-1].end > n - stride  # the last full window that fits is there
        counts = Counter(t for w in ws for t in range(w.first_scored, w.end))
        assert max(counts.values()) <= -(-length // stride)
    elif n >= 2:
        assert ws == [Window(0, n, 1)]


@given(n=st.integers(0, 300), length=st.integers(2, 64))
def test_disjoint_scores_once_with_own_window_context(n, length):
    ws = list(disjoint_windows(n, length))
    s = scored(ws)
    assert sorted(s) == list(range(1, n))
    assert all(len(c) == 1 for c in s.values())
    assert all(b.start == a.end - 1 for a, b in zip(ws, ws[1:], strict=False))  # context restarts


def test_short_streams_and_bad_arguments():
    assert windows(1, 8, 3) == [] and windows(0, 8, 3, "all-tokens") == []
    assert windows(5, 8, 3) == [Window(0, 5, 1)]
    with pytest.raises(ValueError):
        windows(10, 4, 5)  # stride longer than the window would skip tokens
    with pytest.raises(ValueError):
        windows(10, 4, 4)  # a sliding stride of a whole window would score a token with no context
    assert windows(10, 4, 4, "all-tokens") == [Window(0, 4, 1), Window(4, 8, 5)]
    with pytest.raises(ValueError):
        windows(10, 8, 3, "bogus")
