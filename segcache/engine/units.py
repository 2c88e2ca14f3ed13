"""Prefill units: the pieces a part is computed in, one forward each.

A long part is cut into chunks of PREFILL_CHUNK_TOKENS at fixed offsets from the part's start, so
a cached and an uncached run (and a run beside other requests) compute every part in the same
forwards on the same shapes, and the scheduler can run other sequences' decode steps between two
chunks of a long prefill.

    part tokens:  0 ........ 256 ........ 512 ..... 700
    units:        [ chunk 0  ][ chunk 1   ][ chunk 2 ]

These units are the blocks the cache stores (engine/blocks.py): one mechanism for batching and reuse.
The size is --block-tokens; PREFILL_CHUNK_TOKENS is its default.

A forward may span several consecutive whole blocks (up to --prefill-span-tokens, possibly across part
boundaries): small blocks then cost little more than big ones, because the forward's linears and
attention still run block by block (a matmul's row bits depend on its row count) while everything else
runs once over the span. The tree still stores one node per block, and a cached run, which starts at a
block boundary and groups the blocks after it into its own spans, computes every block bit for bit as
an uncached run does (engine/llama.py `forward`, tests/engine/test_spans.py). On a CPU with AMX the
forward's kernels give a row the same bits whatever the call, so there the linears and the attention run
once over the whole span (engine/llama.py `_forward_native`).
"""

from __future__ import annotations

PREFILL_CHUNK_TOKENS = 128


def prefill_units(num_tokens: int, chunk_tokens: int = PREFILL_CHUNK_TOKENS) -> list[tuple[int, int]]:
    """(start, end) offsets of each unit of a part of `num_tokens` tokens; [] for an empty part."""
    return [(start, min(start + chunk_tokens, num_tokens)) for start in range(0, num_tokens, chunk_tokens)]
