"""Which runs of whole blocks a prefill span may send through one linear call, checked at start-up.

A span runs its linears block by block so that each block keeps the bits of its own forward (engine/llama.py
`_Span`). One call over several blocks is cheaper (measured here: the four projections of a layer over 512
rows, 2.6 ms in one call against 4.0 ms in four calls of 128), and for some projection shapes, run lengths
and thread counts it gives exactly the bits of the calls per block; for others it does not (docs/weights.md).
So at start-up the engine computes, per projection shape and run length 2..N blocks, random rows in one call
and block by block, on the thread counts the span would use, and allows the run only where every bit agrees.
How a span's blocks group into runs then changes no bit, and a cached run, which starts at another block and
groups its blocks differently, still computes what an uncached run did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def shape_key(linear) -> tuple:
    """What decides a linear's kernel: its format and shape (the weights' values do not)."""
    return linear.format_name, linear.out_features, linear.in_features


@dataclass(frozen=True)
class SpanMerges:
    block_tokens: int                      # runs are of blocks of exactly this many rows
    allowed: frozenset[tuple[tuple, int]]  # (shape_key, blocks in the run)
    checked: int                           # projection shapes checked

    def allows(self, linear, block_rows: int, count: int) -> bool:
        return block_rows == self.block_tokens and (shape_key(linear), count) in self.allowed

    def summary(self) -> str:
        shapes = {key for key, _ in self.allowed}
        longest = max((count for _, count in self.allowed), default=1)
        return (f"{len(shapes)} of {self.checked} projection shapes run up to {longest} whole "
                f"{self.block_tokens}-token blocks in one call (start-up check: the bits of one call per block)")


def check(linears, block_tokens: int, max_count: int, use_threads: Callable[[int], None], dtype: torch.dtype,
          seed: int = 0) -> SpanMerges:
    """Try every run length 2..max_count of `block_tokens`-row blocks on each distinct projection shape."""
    generator = torch.Generator().manual_seed(seed)
    allowed, seen = set(), set()
    with torch.inference_mode():
        for linear in linears:
            key = shape_key(linear)
            if key in seen:
                continue
            seen.add(key)
            for count in range(2, max_count + 1):
                rows = count * block_tokens
                x = torch.randn((rows, linear.in_features), generator=generator).to(dtype)
                use_threads(block_tokens)
                per_block = torch.cat([linear(x[i * block_tokens:(i + 1) * block_tokens]) for i in range(count)])
                use_threads(rows)
                if torch.equal(linear(x), per_block):
                    allowed.add((key, count))
    return SpanMerges(block_tokens, frozenset(allowed), len(seen))
