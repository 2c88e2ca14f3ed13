"""The segment-tree metric: what segcache's own SegmentTree would reuse, block by block.

Each part is cut into blocks of at most --block-tokens tokens at fixed offsets from the part's start,
as the server cuts it (engine/blocks.py). The blocks walk the tree exactly as the server's do (a child
matches on its kind and role AND its token ids; the last block is always computed, since its logits
start the reply); the request's whole chain is then inserted. Only input parts are cached: the server keeps no KV from
decoding, so a reply is reused only once it comes back as an assistant message and has been
prefilled as a part. With a pool size, the tree evicts least-recently-used leaves, a node weighing
its token count.
"""

from __future__ import annotations

from collections.abc import Sequence

from segcache.cache.keys import ScopeKey, block_key
from segcache.cache.tree import PartSpec, SegmentTree
from segcache.config import ServeConfig
from segcache.engine.units import prefill_units
from segcache.trace.records import Part

UNLIMITED = 1 << 62
DEFAULT_BLOCK_TOKENS: int = ServeConfig.block_tokens  # the server's default --block-tokens


def part_specs(parts: Sequence[Part], part_token_ids: Sequence[tuple[int, ...]],
               block_tokens: int = DEFAULT_BLOCK_TOKENS) -> list[PartSpec]:
    """The tree's view of a request: (key, token ids) per block of each non-empty part, as the server
    builds them; a part whose tokens all merged into the next part's first token is one empty block."""
    specs = []
    for part, ids in zip(parts, part_token_ids):
        if part.text or ids:
            key = block_key(part.kind, part.role or "")
            specs += [PartSpec(key, ids[start:end]) for start, end in prefill_units(len(ids), block_tokens) or [(0, 0)]]
    return specs


def tree_hits(requests: Sequence[Sequence[PartSpec]], pool_tokens: int | None = None,
              scopes: Sequence[str] | None = None) -> list[int]:
    """Tokens each request would read from the tree, in order, starting from an empty cache; each
    request is its blocks' specs (the last one is always computed).

    `scopes` names each request's cache scope (tenant and model); requests in different scopes share
    nothing but the pool's capacity, as on the server. None: one scope for all.
    """
    clock = [0.0]
    tree = SegmentTree(UNLIMITED if pool_tokens is None else pool_tokens, clock=lambda: clock[0])
    hits = []
    for specs, scope in zip(requests, scopes or [""] * len(requests)):
        clock[0] += 1.0
        root = tree.root(ScopeKey(scope))
        match = tree.match(root.scope, specs[:-1])
        hits.append(match.num_tokens)
        chain, node = list(match.nodes), (match.nodes[-1] if match.nodes else root)
        for spec in specs[len(match.nodes):]:
            node = tree.insert(node, spec, payload=None, num_bytes=len(spec.token_ids))
            chain.append(node)
        tree.touch(chain)
        tree.evict_to_capacity()
    return hits
