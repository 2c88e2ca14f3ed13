"""Prefix, substring and segment-tree hits per request, defined so figures compare with published ones.

For each request, in order, against a pool of the earlier requests' input+output tokens:
- prefix hit: the longest common prefix of its input with any pooled sequence;
- substring hit: 4 tokens for each 4-token chunk of its input (chunks at stride 4 from the start) that
  occurs contiguously anywhere in the pooled sequences;
- tree hit: what segcache's SegmentTree would reuse with each block of each part (message) as a node, per
  tenant and model.
Hit rate = hit tokens / all input tokens, the first request included. The pool is unlimited unless a
size in tokens is given; then each metric's pool forgets least-recently-used tokens beyond it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segcache.trace.pool import GRAM, LruPool, PrefixHasher, gram_keys
from segcache.trace.records import Trace
from segcache.trace.tokens import TokenizedRequest
from segcache.trace.tree_metric import DEFAULT_BLOCK_TOKENS, part_specs, tree_hits

METRICS = ("prefix", "substring", "tree")


@dataclass(frozen=True)
class RequestHits:
    input_tokens: int
    prefix: int  # hit tokens under each metric
    substring: int
    tree: int
    chunk_hits: np.ndarray  # (input_tokens // 4,) bool: chunk k (tokens 4k..4k+3) was found in the pool


@dataclass(frozen=True)
class Analysis:
    """One trace under one pool size."""

    name: str
    requests: tuple[RequestHits, ...]
    pool_tokens: int | None  # None: unlimited

    @property
    def input_tokens(self) -> int:
        return sum(r.input_tokens for r in self.requests)

    def hit_tokens(self, metric: str) -> int:
        return sum(getattr(r, metric) for r in self.requests)

    def hit_rate(self, metric: str) -> float:
        return self.hit_tokens(metric) / self.input_tokens if self.input_tokens else 0.0

    def cumulative_rate(self, metric: str) -> np.ndarray:
        """(requests,) hit rate over requests 0..i, for each i."""
        hits = np.cumsum([getattr(r, metric) for r in self.requests])
        total = np.cumsum([r.input_tokens for r in self.requests])
        return hits / np.maximum(total, 1)


def analyze(trace: Trace, tokenized: Sequence[TokenizedRequest], pool_tokens: int | None = None,
            block_tokens: int = DEFAULT_BLOCK_TOKENS) -> Analysis:
    prefix = prefix_hits(tokenized, pool_tokens)
    substring = substring_hits(tokenized, pool_tokens)
    specs = [part_specs(r.parts, t.part_token_ids, block_tokens) for r, t in zip(trace.requests, tokenized)]
    tree = tree_hits(specs, pool_tokens, [r.scope for r in trace.requests])
    requests = tuple(RequestHits(len(t.input_ids), p, int(s.sum()) * GRAM, h, s)
                     for t, p, s, h in zip(tokenized, prefix, substring, tree))
    return Analysis(trace.name, requests, pool_tokens)


def prefix_hits(tokenized: Sequence[TokenizedRequest], pool_tokens: int | None = None) -> list[int]:
    """Longest pooled prefix per request, by binary search: a pooled prefix's own prefixes are pooled too."""
    hasher, pool, hits = PrefixHasher(), LruPool(pool_tokens), []
    for request in tokenized:
        keys = hasher.prefix_keys(request.sequence).tolist()
        low, high = 0, len(request.input_ids)  # invariant: the first `low` tokens are pooled
        while low < high:
            middle = (low + high + 1) // 2
            if keys[middle - 1] in pool:
                low = middle
            else:
                high = middle - 1
        hits.append(low)
        pool.touch(reversed(keys))  # shorter prefixes most recent: the LRU pool stays prefix-closed
    return hits


def substring_hits(tokenized: Sequence[TokenizedRequest], pool_tokens: int | None = None) -> list[np.ndarray]:
    """Per request, which stride-4 chunks of its input occur anywhere in the pooled sequences."""
    largest_id = max((int(ids.max()) for r in tokenized for ids in (r.input_ids, r.output_ids) if len(ids)), default=0)
    exact = largest_id < 1 << 16
    pool, found = LruPool(pool_tokens), []
    for request in tokenized:
        keys = gram_keys(request.sequence, exact)
        chunks = keys[: max(len(request.input_ids) - GRAM + 1, 0): GRAM].tolist()
        found.append(np.fromiter((key in pool for key in chunks), dtype=bool, count=len(chunks)))
        pool.touch(keys.tolist())
    return found
