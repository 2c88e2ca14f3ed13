"""The prompt KV cache as a tree of content-hashed parts: keys, nodes and the tree (no torch, no HTTP)."""

from segcache.cache.keys import (
    ChainKey,
    PartKey,
    ScopeKey,
    SegmentHash,
    chain_key,
    parse_segment_hash,
    part_key,
    root_chain_key,
    scope_key,
    segment_hash,
)
from segcache.cache.node import Eviction, MatchResult, MissReason, Node, PartSpec
from segcache.cache.tree import NodeLockedError, SegmentTree

__all__ = [
    "ChainKey",
    "Eviction",
    "MatchResult",
    "MissReason",
    "Node",
    "NodeLockedError",
    "PartKey",
    "PartSpec",
    "ScopeKey",
    "SegmentHash",
    "SegmentTree",
    "chain_key",
    "parse_segment_hash",
    "part_key",
    "root_chain_key",
    "scope_key",
    "segment_hash",
]
