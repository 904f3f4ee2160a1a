"""The window generator: which tokens each scheme scores, how often, with how much context."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.windows import Window, all_token_windows, disjoint_windows, fills, sliding_windows, windows


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
    assert all(w.first_scored == w.start + 1 and w.length == length for w in ws)
    assert all(w.end < n for w in ws)  # eval.py keeps one target token after every window
    counts = Counter(t for w in ws for t in range(w.first_scored, w.end))
    assert not counts or max(counts.values()) <= -(-length // stride)
    assert bool(ws) == fills(n, length, stride, "all-tokens")


@given(n=st.integers(0, 300), length=st.integers(2, 64))
def test_disjoint_scores_once_with_own_window_context(n, length):
    ws = list(disjoint_windows(n, length))
    s = scored(ws)
    assert sorted(s) == list(range(1, n))
    assert all(len(c) == 1 for c in s.values())
    assert all(w.length == min(n, length) for w in ws)  # the last window is filled back to full length
    assert all(b.first_scored == a.end for a, b in zip(ws, ws[1:], strict=False))
    assert all(b.start == a.end - 1 for a, b in zip(ws, ws[1:-1], strict=False))  # context restarts


# --------------------------------------------------------------------------- the tools the modes name


def harness_windows(n: int, max_length: int) -> list[Window]:
    """lm-evaluation-harness `loglikelihood_rolling` (HFLM), transcribed from its source: lm_eval/utils.py
    `get_rolling_token_windows` and `make_disjoint_window` (commit 4e7e0d4), and the model input of
    `HFLM._loglikelihood_tokens`. Tokens are their own stream positions: position 0 is the prefix token."""

    def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
        assert 1 <= context_len <= max_seq_len
        if not token_list:
            return
        pred_len = max_seq_len - context_len + 1
        predicted = 0
        first_seq_len = min(max_seq_len, len(token_list))
        yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
        predicted += first_seq_len
        while predicted < len(token_list):
            window_pred_len = min(len(token_list) - predicted, pred_len)
            window_end = predicted + window_pred_len
            yield (
                token_list[window_end - max_seq_len - 1 : window_end - 1],
                token_list[window_end - window_pred_len : window_end],
            )
            predicted += window_pred_len

    def make_disjoint_window(pair):
        a, b = pair
        return a[: len(a) - (len(b) - 1)], b

    out = []
    pairs = get_rolling_token_windows(list(range(1, n)), 0, max_length, context_len=1)
    for context_enc, continuation_enc in map(make_disjoint_window, pairs):
        inp = (context_enc + continuation_enc)[-(max_length + 1) :][:-1]  # the model's input
        read = inp + continuation_enc[-1:]  # and the last target: llqa's window holds it
        assert read == list(range(read[0], read[-1] + 1))
        out.append(Window(read[0], read[-1] + 1, continuation_enc[0]))  # the last len(cont) logits score cont
    return out


def longlora_windows(n: int, seq_length: int, sliding_window: int) -> list[Window]:
    """LongLoRA eval.py `get_as_batch` + `evaluate`, transcribed from its source (commit d4eb344): each x is
    scored by the model with labels=x (the loss of x[1:] given the tokens before each)."""
    data = np.arange(n)
    all_ix = list(range(0, len(data) - seq_length, sliding_window))
    if not all_ix:
        return []  # eval.py's `all_ix.pop()` fails here: no window
    all_ix.pop()
    out = []
    for i in all_ix:
        assert i + seq_length + 1 <= len(data)
        x = data[i : i + seq_length]
        out.append(Window(int(x[0]), int(x[-1]) + 1, int(x[1])))
    return out


@given(n=st.integers(0, 400), length=st.integers(2, 64))
def test_disjoint_is_the_harness_rolling_windows(n, length):
    """llqa's L is the harness's max_length L - 1: the model reads L - 1 tokens to score the last of L."""
    assert windows(n, length, 1, "disjoint") == harness_windows(n, length - 1)


@given(n=st.integers(0, 400), length=st.integers(2, 64), data=st.data())
def test_all_tokens_is_longlora_eval_py(n, length, data):
    stride = data.draw(st.integers(1, length))
    assert windows(n, length, stride, "all-tokens") == longlora_windows(n, length, stride)


def test_gold_harness_and_longlora():
    # 3,000 tokens at max_length 1,023 (llqa L = 1,024): windows of 1,024, the third filled back
    assert harness_windows(3001, 1023) == [Window(0, 1024, 1), Window(1023, 2047, 1024), Window(1977, 3001, 2047)]
    assert longlora_windows(3000, 1024, 256) == [Window(s, s + 1024, s + 1) for s in range(0, 1536 + 1, 256)]


@given(n=st.integers(0, 300), length=st.integers(2, 64), data=st.data())
def test_fills_means_a_full_window(n, length, data):
    for scoring in ("sliding", "all-tokens", "disjoint"):
        stride = data.draw(
            st.integers(1, length if scoring == "all-tokens" else length - 1) if length > 2 else st.just(1)
        )
        ws = windows(n, length, stride, scoring)
        assert fills(n, length, stride, scoring) == any(w.length == length for w in ws)


def test_short_streams_and_bad_arguments():
    assert windows(1, 8, 3) == [] and windows(0, 8, 3, "all-tokens") == []
    assert windows(5, 8, 3) == [Window(0, 5, 1)] == windows(5, 8, 3, "disjoint")
    assert windows(11, 8, 3, "all-tokens") == []  # LongLoRA: no window until more than length + stride tokens
    with pytest.raises(ValueError):
        windows(10, 4, 5)  # stride longer than the window would skip tokens
    with pytest.raises(ValueError):
        windows(10, 4, 4)  # a sliding stride of a whole window would score a token with no context
    assert windows(10, 4, 4, "all-tokens") == [Window(0, 4, 1)]  # range(0, 6, 4) less its last start
    with pytest.raises(ValueError):
        windows(10, 8, 3, "bogus")
