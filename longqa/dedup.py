"""Near-duplicate documents by sampled word shingles (the same test in build and validate).

A document's fingerprint is the set of its 8-word shingles that start at an "anchor" word (a word whose
crc32 is 0 mod 8): a stable, content-defined sample, so two copies of a text that differ in formatting
or in a few edits share most anchors. Two documents are near-duplicates when the Jaccard similarity
of their fingerprints is at least `threshold`.
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Mapping

SHINGLE = 8
ANCHOR_MOD = 8
_WORD = re.compile(r"\w+")


def fingerprint(text: str) -> frozenset[int]:
    words = _WORD.findall(text.lower())
    anchors = {w for w in set(words) if zlib.crc32(w.encode()) % ANCHOR_MOD == 0}
    last = len(words) - SHINGLE + 1
    out = {
        zlib.crc32(" ".join(words[i : i + SHINGLE]).encode()) for i, w in enumerate(words) if w in anchors and i < last
    }
    if not out and words:  # very short texts: the whole text is the one shingle
        out.add(zlib.crc32(" ".join(words).encode()))
    return frozenset(out)


def near_duplicate_pairs(
    prints: Mapping[str, frozenset[int]], threshold: float = 0.5, max_df: int = 50
) -> list[tuple[str, str, float]]:
    """(a, b, jaccard) with a < b for every pair at or above `threshold`, sorted. Shingles shared by more
    than `max_df` documents (boilerplate) do not propose pairs."""
    index: dict[int, list[str]] = defaultdict(list)
    for key in sorted(prints):
        for h in prints[key]:
            index[h].append(key)
    shared: dict[tuple[str, str], int] = defaultdict(int)
    for keys in index.values():
        if 1 < len(keys) <= max_df:
            for i, a in enumerate(keys):
                for b in keys[i + 1 :]:
                    shared[(a, b)] += 1
    out = []
    for (a, b), n in shared.items():
        union = len(prints[a]) + len(prints[b]) - n
        j = n / union if union else 1.0
        if j >= threshold:
            out.append((a, b, round(j, 4)))
    return sorted(out)


def clusters(keys: list[str], pairs: list[tuple[str, str, float]]) -> dict[str, str]:
    """key -> its cluster's representative (the smallest key), joining near-duplicate pairs."""
    parent = {k: k for k in keys}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {k: find(k) for k in keys}


class NearDuplicateIndex:
    """Documents inserted one at a time; `query` finds the inserted documents a new one near-duplicates, before
    the caller decides whether to insert it."""

    def __init__(self, threshold: float = 0.5, max_df: int = 50):
        self.threshold, self.max_df = threshold, max_df
        self.index: dict[int, list[str]] = defaultdict(list)
        self.sizes: dict[str, int] = {}

    def insert(self, key: str, fp: frozenset[int]) -> None:
        for h in fp:
            self.index[h].append(key)
        self.sizes[key] = len(fp)

    def query(self, fp: frozenset[int]) -> list[tuple[str, float]]:
        """The documents already added that a document with fingerprint `fp` near-duplicates (key, jaccard)."""
        shared: dict[str, int] = defaultdict(int)
        for h in fp:
            keys = self.index.get(h, ())
            if len(keys) < self.max_df:
                for other in keys:
                    shared[other] += 1
        out = []
        for other, n in sorted(shared.items()):
            union = len(fp) + self.sizes[other] - n
            j = n / union if union else 1.0
            if j >= self.threshold:
                out.append((other, round(j, 4)))
        return out
