"""The cache tree's data types: one Node per cached part, and the small results the tree returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from segcache.cache.keys import ChainKey, PartKey, ScopeKey


class MissReason(str, Enum):
    """Why a part was not served from the cache (the `reason` of a segment receipt)."""

    NEW = "new"  # never cached at this position (or its tombstone was forgotten)
    EVICTED = "evicted"  # was cached here and removed to make room, or taken along with an expired ancestor
    EXPIRED = "expired"  # was cached here and its ttl ran out
    BOUNDARY = "boundary"  # cached with the same key but other token ids (a token straddles a part boundary)
    PREFIX_MISS = "prefix_miss"  # an earlier part missed; set by the caller, the tree reports the first miss only


class PartSpec(NamedTuple):
    """One part of a request as the tree sees it: its key and the token ids it owns."""

    key: PartKey
    token_ids: tuple[int, ...]
    label: str | None = None  # segment id, for display only
    part_key: PartKey | None = None  # the key of the part this block belongs to (None: `key` is the part's key)


ChildId = tuple[PartKey, tuple[int, ...]]  # a child's identity under its parent: (key, token_ids)


@dataclass(eq=False, repr=False)
class Node:
    """One cached block of a part (or a whole part): its token ids and the KV of exactly those tokens,
    computed with its ancestors as context.

    A node's KV is only valid below its parent, which is why eviction removes leaves only. Compared and
    hashed by identity. The tree owns every field; callers read them and use `payload` while the node is locked.
    """

    key: PartKey | None  # None only for a scope root
    token_ids: tuple[int, ...]  # the tokens this part owns (a root owns none)
    payload: object | None = field(repr=False)  # opaque to the tree; the engine keeps the KV here
    num_bytes: int  # what the payload costs against the tree's capacity (a root: 0)
    parent: Node | None = field(repr=False)  # None only for a scope root
    scope: ScopeKey
    start: int  # tokens before this node on its path: root 0, child parent.start + len(parent.token_ids)
    label: str | None = None  # segment id, for display
    part_key: PartKey | None = None  # the part this block belongs to (tells a boundary miss from a new one)
    children: dict[ChildId, Node] = field(default_factory=dict, repr=False)
    lock_count: int = 0  # requests using this node; a root holds one permanent lock
    pinned: bool = False  # pinned nodes are never removed to make room (they still expire)
    expires_at: float | None = None  # clock time after which the node is evictable at once; None = never
    last_access: float = 0.0  # clock time of the last touch (or of creation)
    created_at: float = 0.0
    hits: int = 0
    chain_key: ChainKey = field(kw_only=True, repr=False)  # this position, by content (see keys.chain_key)

    @property
    def end(self) -> int:
        """Tokens before this node's end on its path."""
        return self.start + len(self.token_ids)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def child_id(self) -> ChildId:
        """This node's key in its parent's `children`."""
        return (self.key, self.token_ids)  # type: ignore[return-value]  # a root is nobody's child

    @property
    def name(self) -> str:
        """For people: the segment id if there is one, else the key's first 8 hex digits."""
        if self.key is None:
            return f"root of scope {self.scope[:8]}"
        return self.label or self.key[:8]

    def chain(self) -> list[Node]:
        """The path from the top (root excluded) down to this node, inclusive."""
        path = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            path.append(node)
            node = node.parent
        return path[::-1]

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def post_order(self) -> list[Node]:
        """This node and its descendants, each node after all of its descendants."""
        order, stack = [], [self]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(node.children.values())
        return order[::-1]

    def __repr__(self) -> str:
        return (f"Node({self.name!r}, tokens=[{self.start},{self.end}), bytes={self.num_bytes}, "
                f"locks={self.lock_count}, pinned={self.pinned}, expires_at={self.expires_at}, "
                f"children={len(self.children)})")


class MatchResult(NamedTuple):
    """The longest cached chain for a request's leading parts."""

    nodes: list[Node]  # matched chain, root excluded, in order; len(nodes) = number of leading parts matched
    num_tokens: int  # tokens covered by `nodes`
    miss_reason: MissReason | None  # why parts[len(nodes)] did not match; None if every part matched


class Eviction(NamedTuple):
    """One node removed by SegmentTree.evict."""

    scope: ScopeKey
    key: PartKey
    num_tokens: int
    num_bytes: int
    reason: MissReason  # EVICTED or EXPIRED


@dataclass
class ScopeTotals:
    """Counters the tree keeps per scope, updated on every insert, removal and pin."""

    num_bytes: int = 0
    num_nodes: int = 0
    pinned_bytes: int = 0
