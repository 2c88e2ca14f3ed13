"""Blocks: the unit a part is prefilled in and cached as, one tree node each.

Every part is cut into blocks of at most --block-tokens tokens at fixed offsets from the part's start
(engine/units.py), so a cached and an uncached run compute every block with the same matmuls on the
same shapes (one forward may span several blocks, its matmuls still run block by block). A
block is matched by its token ids under its parent block, not by its part's text: a part whose text
changed after token N still matches its blocks that end before N.

    part  "system message" (700 tokens, --block-tokens 256)
    blocks [0, 256) [256, 512) [512, 700)          a change at token 600 recomputes only the last block

A part with no tokens of its own (all merged into the next part's first token) is one empty block, so
every part has a node and the chain stays part-complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segcache.cache.keys import block_key
from segcache.cache.node import PartSpec
from segcache.engine.prompt import Part
from segcache.engine.units import prefill_units


@dataclass(frozen=True)
class Block:
    part_index: int
    start: int          # offsets within the part's tokens
    end: int
    spec: PartSpec      # what the tree matches and stores

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


def plan_blocks(parts: Sequence[Part], block_tokens: int) -> list[Block]:
    """The blocks of every part, in prompt order."""
    blocks = []
    for index, part in enumerate(parts):
        key = block_key(part.kind, part.role or "")
        for start, end in prefill_units(len(part.token_ids), block_tokens) or [(0, 0)]:
            spec = PartSpec(key, part.token_ids[start:end], part.label, part.key)
            blocks.append(Block(index, start, end, spec))
    return blocks


def cached_tokens_per_part(blocks: Sequence[Block], num_parts: int, num_matched: int) -> list[int]:
    """Tokens of each part served by the first `num_matched` blocks."""
    cached = [0] * num_parts
    for block in blocks[:num_matched]:
        cached[block.part_index] += block.num_tokens
    return cached


def complete_parts(blocks: Sequence[Block], num_held: int) -> int:
    """How many leading parts have all their blocks among the first `num_held`."""
    if num_held >= len(blocks):
        return blocks[-1].part_index + 1 if blocks else 0
    return blocks[num_held].part_index

