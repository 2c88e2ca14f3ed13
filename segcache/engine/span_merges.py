"""Which runs of whole blocks a prefill span may send through one linear call, checked at start-up.

A span runs its linears block by block so that each block keeps the bits of its own forward (engine/llama.py
`_Span`). One call over several blocks is cheaper (measured here: the four projections of a layer over 512
rows, 2.6 ms in one call against 4.0 ms in four calls of 128), and for some projection shapes, run lengths
and thread counts it gives exactly the bits of the calls per block; for others it does not (docs/weights.md).
So at start-up the engine computes, per projection shape and run length 2..N blocks, random rows in one call
and block by block, on the thread counts the span would use, and allows the run only where every bit agrees.
How a span's blocks group into runs then changes no bit, and a cached run, which starts at another block and
groups its blocks differently, still computes what an uncached run did.

Where the dense weight's library kernel gives a row the same bits in a call of any size (`check_dense`: oneDNN's
bfloat16 matmul on the Zen 4 EPYC CI runs on), every block it computes joins one call per linear, whatever the
blocks' sizes: a forward of seven short prompts' blocks (85, 40, 93, 35, 81, 50 and 9 rows) took 0.88x the time
of its calls per block and runs, with the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from segcache.engine.linear import dense_rows_from, is_row_invariant


def shape_key(linear) -> tuple:
    """What decides a linear's kernel: its format and shape (the weights' values do not)."""
    return linear.format_name, linear.out_features, linear.in_features


@dataclass(frozen=True)
class SpanMerges:
    block_tokens: int                      # runs are of blocks of exactly this many rows
    allowed: frozenset[tuple[tuple, int]]  # (shape_key, blocks in the run)
    checked: int                           # projection shapes checked
    small: frozenset[tuple] = frozenset()  # shape_keys whose short blocks gather into calls (check_small)
    small_limit: int = 0                   # ... of up to this many rows, blocks of up to this many rows
    dense: frozenset[tuple] = frozenset()  # shape_keys whose blocks on the dense weight share a call (check_dense)
    dense_limit: int = 0                   # ... of up to this many rows

    def allows(self, linear, block_rows: int, count: int) -> bool:
        return block_rows == self.block_tokens and (shape_key(linear), count) in self.allowed

    def small_rows(self, linear) -> int:
        """Blocks of up to this many rows may share this linear's calls of up to as many rows (0: none)."""
        return self.small_limit if shape_key(linear) in self.small else 0

    def dense_from(self, linear) -> int:
        """Blocks of at least this many rows may share one call of this linear's dense weight (0: none)."""
        return dense_rows_from(linear) if shape_key(linear) in self.dense else 0

    def summary(self) -> str:
        parts = []
        if self.allowed:
            shapes = {key for key, _ in self.allowed}
            longest = max(count for _, count in self.allowed)
            parts.append(f"{len(shapes)} of {self.checked} projection shapes run up to {longest} whole "
                         f"{self.block_tokens}-token blocks in one call")
        if self.small:
            parts.append(f"blocks of up to {self.small_limit} tokens share the calls of {len(self.small)} "
                         f"quantized projection shapes")
        if self.dense:
            parts.append(f"the blocks on the dense weight of {len(self.dense)} projection shapes share one call "
                         f"of up to {self.dense_limit} tokens")
        return "; ".join(parts or ["no runs of blocks share a call"]) + \
            " (start-up check: the bits of one call per block)"


def _by_shape(linears) -> list[tuple[tuple, object]]:
    """Each distinct projection shape once: (its shape_key, the first linear of that shape)."""
    first: dict[tuple, object] = {}
    for linear in linears:
        first.setdefault(shape_key(linear), linear)
    return list(first.items())


def check(linears, block_tokens: int, max_count: int, use_threads: Callable[[int], None], dtype: torch.dtype,
          seed: int = 0) -> SpanMerges:
    """Try every run length 2..max_count of `block_tokens`-row blocks on each distinct projection shape."""
    generator = torch.Generator().manual_seed(seed)
    allowed, shapes = set(), _by_shape(linears)
    with torch.inference_mode():
        for key, linear in shapes:
            for count in range(2, max_count + 1):
                rows = count * block_tokens
                x = torch.randn((rows, linear.in_features), generator=generator).to(dtype)
                use_threads(block_tokens)
                per_block = torch.cat([linear(x[i * block_tokens:(i + 1) * block_tokens]) for i in range(count)])
                use_threads(rows)
                if torch.equal(linear(x), per_block):
                    allowed.add((key, count))
    return SpanMerges(block_tokens, frozenset(allowed), len(shapes))


def check_small(linears, most_rows: int, use_threads: Callable[[int], None], seed: int = 0) -> frozenset[tuple]:
    """The projection shapes whose calls of 1..most_rows rows give every row the bits it gets in a call of its
    own, each call on the threads a forward of its rows runs on, with the rows in another order too
    (engine/linear.py `is_row_invariant`). For those, a span's blocks of up to most_rows rows may share calls
    in any grouping (a block's rows included): every row keeps its own bits. The quantized kernels serve short
    forwards (engine/linear.py), so a span of long blocks with a few short ones (a role header, a short
    message) otherwise reads all the quantized weights once more per short block."""
    agree = set()
    with torch.inference_mode():
        for key, linear in _by_shape(linears):
            if not hasattr(linear, "kernel"):
                continue
            if is_row_invariant(linear, range(1, most_rows + 1), seed, use_threads, reordered=True):
                agree.add(key)
    return frozenset(agree)


def check_dense(linears, block_tokens: int, most_rows: int, use_threads: Callable[[int], None], dtype: torch.dtype,
                seed: int = 0) -> frozenset[tuple]:
    """The projection shapes whose dense weight gives a row the same bits in a call of any size up to most_rows:
    against one call of most_rows random rows, calls of every size a block can have (from the fewest rows the
    linear computes on its dense weight to block_tokens) and of sizes spread over the rest (what a forward's
    blocks add up to), each at the first and the last rows, each on the threads a forward of its rows runs on.
    For those, a span's blocks on the dense weight share one call in any grouping (llama.py `_Span`)."""
    if most_rows <= block_tokens:
        return frozenset()
    generator = torch.Generator().manual_seed(seed)
    agree = set()
    with torch.inference_mode():
        for key, linear in _by_shape(linears):
            dense = getattr(linear, "dense", linear)
            x = torch.randn((most_rows, linear.in_features), generator=generator).to(dtype)
            use_threads(most_rows)
            whole = dense(x)
            step = max(8, (most_rows - block_tokens) // 24)
            sizes = [*range(dense_rows_from(linear), block_tokens + 1), *range(block_tokens + 1, most_rows, step)]
            if all(_agrees(dense, x, whole, size, start, use_threads)
                   for size in sizes for start in (0, most_rows - size)):
                agree.add(key)
    return frozenset(agree)


def _agrees(dense, x: torch.Tensor, whole: torch.Tensor, size: int, start: int,
            use_threads: Callable[[int], None]) -> bool:
    use_threads(size)
    return torch.equal(dense(x[start:start + size]), whole[start:start + size])
