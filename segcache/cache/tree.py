"""SegmentTree: the prompt KV cache as a tree of parts, one root per scope.

    scope root (0 tokens, locked for good)
      +-- head                 tokens [0, 12)
            +-- global-rules   tokens [12, 900)
            |     +-- backend-agent   [900, 1400)
            |     +-- frontend-agent  [900, 1320)
            +-- user message   tokens [12, 40)

A node holds one part's token ids, or one block of them (the engine caches a part as blocks of at most
--block-tokens tokens, matched by their token ids so a part whose tail changed reuses its head), and the
KV of exactly those tokens (an opaque payload here), computed with all its ancestors as context. Nothing in this module knows torch or HTTP: the tests run it with
payload=None and a fake clock.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

from segcache.cache.eviction import EvictionOrder
from segcache.cache.heap import LazyHeap
from segcache.cache.invariants import check_tree
from segcache.cache.keys import ChainKey, ScopeKey, chain_key, root_chain_key
from segcache.cache.node import ChildId, Eviction, MatchResult, MissReason, Node, PartSpec, ScopeTotals
from segcache.cache.render import render_scope
from segcache.cache.shares import SharePolicy

__all__ = ["Eviction", "MatchResult", "MissReason", "Node", "NodeLockedError", "PartSpec", "PinQuotaError",
           "SegmentTree", "SharePolicy"]


class NodeLockedError(RuntimeError):
    """A node in use by a running request blocks the operation; retry once the request finishes."""


class PinQuotaError(ValueError):
    """Pinning would pass the scope's pin limit or the budget; nothing was pinned."""

    def __init__(self, needed: int, room: int):
        super().__init__(f"pinning needs {needed} more bytes but only {room} may still be pinned")
        self.needed, self.room = needed, room


class SegmentTree:
    """Prefix cache of prompt parts; one tree per scope (tenant, model, weights, dtype, tokenizer).

    Contract:
    - match() does not modify anything (no access time, hit count or expiry change); touch() does.
    - Lock a matched chain before using its payloads and unlock it when done: locked nodes are never removed.
    - insert() never evicts; call evict_to_capacity() once the request has unlocked its chain.
    - evict(0) is always safe: it removes only expired nodes.
    - Pinned nodes are never removed to make room, but they do expire. A scope pins at most its pin limit
      (see SharePolicy.pin_limit; without a policy, the budget) and all scopes together at most the budget.
    - With a SharePolicy, eviction takes from the scope furthest over its share first (LRU inside it);
      without one, the least recently used leaf of any scope goes first.
    - A removed node is unlinked and its payload dropped (set to None).
    - Not thread-safe: one engine worker owns the tree.
    """

    def __init__(self, capacity_bytes: int, clock: Callable[[], float] = time.monotonic,
                 max_tombstones: int = 100_000, shares: SharePolicy | None = None):
        if capacity_bytes < 0 or max_tombstones < 0:
            raise ValueError("capacity_bytes and max_tombstones must be >= 0")
        self.capacity_bytes = capacity_bytes
        self.max_tombstones = max_tombstones  # removed positions remembered, to tell evicted/expired from new
        self._clock = clock
        self.shares = shares
        self._roots: dict[ScopeKey, Node] = {}
        self._totals: dict[ScopeKey, ScopeTotals] = {}
        self._used_bytes = 0
        self._num_nodes = 0
        self._tombstones: OrderedDict[ChainKey, MissReason] = OrderedDict()  # least recently removed first
        self._lru = EvictionOrder(self._is_lru_candidate)
        self._pinned_bytes = 0
        self._expiry = LazyHeap(lambda node: node.expires_at, self._has_expiry)  # type: ignore[arg-type,return-value]

    @property
    def used_bytes(self) -> int:
        """Sum of num_bytes over all non-root nodes."""
        return self._used_bytes

    @property
    def num_nodes(self) -> int:
        """Number of non-root nodes."""
        return self._num_nodes

    def root(self, scope: ScopeKey) -> Node:
        """The root of `scope`, created on first use. Roots hold no tokens or bytes and are never evicted."""
        root = self._roots.get(scope)
        if root is None:
            now = self._clock()
            root = Node(key=None, token_ids=(), payload=None, num_bytes=0, parent=None, scope=scope, start=0,
                        lock_count=1, last_access=now, created_at=now, chain_key=root_chain_key(scope))
            self._roots[scope] = root
            self._totals[scope] = ScopeTotals()
            self._lru.add_scope(scope)
        return root

    def match(self, scope: ScopeKey, parts: Sequence[PartSpec]) -> MatchResult:
        """The longest chain of `parts`' leading parts cached under `scope`; read-only.

        A part matches a child with the same key AND the same token ids that has not expired. A missing
        scope is an empty match (its root is not created).
        """
        node = self._roots.get(scope)
        if node is None:
            return MatchResult([], 0, MissReason.NEW if parts else None)
        now = self._clock()
        nodes: list[Node] = []
        for part in parts:
            child_id = (part.key, tuple(part.token_ids))
            child = node.children.get(child_id)
            if child is None or child.is_expired(now):
                reason = MissReason.EXPIRED if child is not None else self._miss_reason(node, child_id, part)
                return MatchResult(nodes, node.end, reason)
            nodes.append(child)
            node = child
        return MatchResult(nodes, node.end, None)

    def insert(self, parent: Node, part: PartSpec, payload: object, num_bytes: int,
               ttl_seconds: float | None = None) -> Node:
        """Add `part` under `parent` (a live node, normally the locked end of a matched chain) and return it.

        If the child already exists it is returned as it is, payload and bytes unchanged (use the returned
        node's payload); only its expiry is renewed: now + ttl_seconds, or never if it had expired and no ttl
        is given. Forgets any tombstone at that position. Never evicts.
        """
        self._require_live([parent])
        _require_non_negative(num_bytes=num_bytes, ttl_seconds=ttl_seconds)
        now = self._clock()
        child_id = (part.key, tuple(part.token_ids))
        node = parent.children.get(child_id)
        if node is not None:
            if ttl_seconds is not None or node.is_expired(now):
                self._set_expiry(node, now, ttl_seconds)
            return node
        node = Node(key=part.key, token_ids=child_id[1], payload=payload, num_bytes=num_bytes, parent=parent,
                    scope=parent.scope, start=parent.end, label=part.label,
                    part_key=part.part_key or part.key, last_access=now, created_at=now,
                    chain_key=chain_key(parent.chain_key, *child_id))
        parent.children[child_id] = node
        self._count(node, +1)
        self._tombstones.pop(node.chain_key, None)
        self._set_expiry(node, now, ttl_seconds)
        self._lru.push(node)
        return node

    def contains(self, node: Node) -> bool:
        """Whether `node` is still in the tree (not evicted, its scope not removed)."""
        return self._is_live(node)

    def lock(self, nodes: Iterable[Node]) -> None:
        """Mark live nodes as in use (re-entrant); all or nothing."""
        nodes = self._require_live(nodes)
        for node in nodes:
            node.lock_count += 1

    def unlock(self, nodes: Iterable[Node]) -> None:
        """Undo lock(); raises ValueError, changing nothing, if a count would fall below zero (a root's below one)."""
        nodes = list(nodes)
        for node, times in Counter(nodes).items():
            if node.lock_count - times < (1 if node.is_root else 0):
                raise ValueError(f"unlock of node {node.name} without a matching lock")
        for node in nodes:
            node.lock_count -= 1
            self._lru.push(node)

    def touch(self, nodes: Iterable[Node], hit: bool = True) -> None:
        """Record a use now: last_access = now, and hits += 1 if `hit`."""
        now = self._clock()
        for node in self._require_live(nodes):
            node.last_access = now
            node.hits += int(hit)
            self._lru.push(node)

    def set_ttl(self, nodes: Iterable[Node], ttl_seconds: float | None) -> None:
        """expires_at = now + ttl_seconds for each node (None: never expires); may shorten a ttl."""
        _require_non_negative(ttl_seconds=ttl_seconds)
        now = self._clock()
        for node in self._require_live(nodes, roots=False):
            self._set_expiry(node, now, ttl_seconds)

    def pin(self, nodes: Iterable[Node]) -> None:
        """Keep nodes from being removed to make room (they still expire); idempotent.

        Raises PinQuotaError, pinning nothing, if a scope would pass pin_room().
        """
        nodes = list(dict.fromkeys(n for n in self._require_live(nodes, roots=False) if not n.pinned))
        for scope, needed in _bytes_by_scope(nodes).items():
            if needed > (room := self.pin_room(scope)):
                raise PinQuotaError(needed, room)
        if (needed := sum(n.num_bytes for n in nodes)) > self.capacity_bytes - self._pinned_bytes:
            raise PinQuotaError(needed, self.capacity_bytes - self._pinned_bytes)
        for node in nodes:
            node.pinned = True
            self._totals[node.scope].pinned_bytes += node.num_bytes
            self._pinned_bytes += node.num_bytes

    def unpin(self, nodes: Iterable[Node]) -> int:
        """Undo pin(); idempotent. Returns the bytes unpinned."""
        unpinned = 0
        for node in self._require_live(nodes, roots=False):
            if node.pinned:
                node.pinned = False
                self._totals[node.scope].pinned_bytes -= node.num_bytes
                self._pinned_bytes -= node.num_bytes
                unpinned += node.num_bytes
                self._lru.push(node)
        return unpinned

    def unpin_scope(self, scope: ScopeKey) -> int:
        """Unpin every node of `scope`; returns the bytes unpinned."""
        return self.unpin([node for _, node in self.iter_nodes(scope) if node.pinned])

    def pinned_bytes(self, scope: ScopeKey) -> int:
        return self._totals[scope].pinned_bytes if scope in self._totals else 0

    def pin_limit(self) -> int:
        """Bytes one scope may pin in all."""
        return self.shares.pin_limit(self.capacity_bytes) if self.shares else self.capacity_bytes

    def pin_room(self, scope: ScopeKey) -> int:
        """Bytes `scope` may still pin: within its pin limit, and within the budget for all scopes together."""
        return max(0, min(self.pin_limit() - self.pinned_bytes(scope), self.capacity_bytes - self._pinned_bytes))

    def share(self, scope: ScopeKey) -> int:
        """`scope`'s share of the budget now (the whole budget without a SharePolicy)."""
        if self.shares is None or self.shares.lru_only:
            return self.capacity_bytes
        return self.shares.share(self.capacity_bytes, self._num_active() + (self.scope_bytes(scope) == 0))

    def evict(self, num_bytes: int) -> list[Eviction]:
        """Remove expired nodes, then least-recently-used leaves until at least `num_bytes` are freed in all.

        With a SharePolicy each leaf is taken from the scope furthest over its share (LRU within it).

        Expired: every expired node whose subtree is unlocked goes, with its subtree (leaves first; a dragged
        descendant that has not expired itself is reported EVICTED). Then unlocked, unpinned leaves go in
        order of last_access (a parent becomes a leaf, and a candidate, when its last child goes). Stops early
        when nothing more can be removed. Returns the removals in order.
        """
        _require_non_negative(num_bytes=num_bytes)
        evictions = self._evict_expired(self._clock())
        freed = sum(eviction.num_bytes for eviction in evictions)
        while freed < num_bytes and (node := self._pop_victim()) is not None:
            evictions.append(self._remove(node, MissReason.EVICTED))
            freed += node.num_bytes
        return evictions

    def evict_to_capacity(self) -> list[Eviction]:
        """evict() down to capacity_bytes (unless locked or pinned nodes hold more than that)."""
        return self.evict(max(0, self._used_bytes - self.capacity_bytes))

    def remove_scope(self, scope: ScopeKey) -> int:
        """Drop a scope's whole tree, root included, and return the bytes freed (0 for an unknown scope).

        Raises NodeLockedError, changing nothing, if a running request has any of its nodes locked.
        """
        root = self._roots.get(scope)
        if root is None:
            return 0
        num_locked = sum(1 for _, node in self.iter_nodes(scope) if node.lock_count) + (root.lock_count > 1)
        if num_locked:
            raise NodeLockedError(f"{num_locked} cached nodes of this scope are in use by running requests; "
                                  "retry when they finish")
        for node in root.post_order():
            if node is not root:
                self._unlink(node)
        totals = self._totals.pop(scope)
        del self._roots[scope]
        self._lru.remove_scope(scope)
        self._pinned_bytes -= totals.pinned_bytes
        self._used_bytes -= totals.num_bytes
        self._num_nodes -= totals.num_nodes
        return totals.num_bytes

    def scopes(self) -> list[ScopeKey]:
        return list(self._roots)

    def iter_nodes(self, scope: ScopeKey) -> Iterator[tuple[int, Node]]:
        """(depth, node) depth-first, children in insertion order, root excluded (its children have depth 1).

        Do not modify the tree while iterating.
        """
        root = self._roots.get(scope)
        stack = [(1, child) for child in reversed(root.children.values())] if root is not None else []
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, child) for child in reversed(node.children.values()))

    def scope_bytes(self, scope: ScopeKey) -> int:
        return self._totals[scope].num_bytes if scope in self._totals else 0

    def scope_nodes(self, scope: ScopeKey) -> int:
        return self._totals[scope].num_nodes if scope in self._totals else 0

    def check(self, within_budget: bool = False) -> None:
        """Raise AssertionError naming the first broken invariant (totals, links, locks, pins, heaps, budget).

        Pins: each scope's pinned bytes <= the pin limit, all pinned bytes <= the budget. With
        `within_budget` (as the engine leaves the tree after every insert): bytes in use <= the budget
        unless nothing more could be evicted (every remaining leaf is locked or pinned).
        """
        lru = self._lru.candidates()
        check_tree(self._roots, self._totals, self._used_bytes, self._num_nodes, self._tombstones,
                   lru_candidates=(lru, self._is_lru_candidate),
                   expiry_candidates=(self._expiry.candidates(), self._has_expiry))
        assert self._lru.scopes() == set(self._roots), "scopes with an LRU heap != scopes with a root"
        pinned = sum(totals.pinned_bytes for totals in self._totals.values())
        assert pinned == self._pinned_bytes, f"pinned bytes {self._pinned_bytes} != recomputed {pinned}"
        assert pinned <= self.capacity_bytes, f"{pinned} pinned bytes exceed the budget {self.capacity_bytes}"
        for scope, totals in self._totals.items():
            assert totals.pinned_bytes <= self.pin_limit(), \
                f"scope {scope[:8]} pins {totals.pinned_bytes} bytes, over its limit {self.pin_limit()}"
        if within_budget:
            assert self._used_bytes <= self.capacity_bytes or not lru, \
                f"{self._used_bytes} bytes in use exceed the budget {self.capacity_bytes} with evictable leaves"

    def render_text(self, scope: ScopeKey, now: float | None = None) -> str:
        """An ASCII drawing of the scope's tree: label (or key[:8]), tokens, bytes, hits, locks, pin, ttl left."""
        now = self._clock() if now is None else now
        return render_scope(scope, self._roots.get(scope), self._totals.get(scope, ScopeTotals()), now)

    # -- private helpers ----------------------------------------------------------------------------------

    def _miss_reason(self, node: Node, child_id: ChildId, part: PartSpec) -> MissReason:
        part_key = part.part_key or part.key
        if any(child.part_key == part_key for child in node.children.values()):
            return MissReason.BOUNDARY
        return self._tombstones.get(chain_key(node.chain_key, *child_id), MissReason.NEW)

    def _evict_expired(self, now: float) -> list[Eviction]:
        evictions: list[Eviction] = []
        deferred: dict[Node, None] = {}  # expired but something below is locked: retried on the next call
        while (node := self._expiry.pop(limit=now)) is not None:
            subtree = node.post_order()
            if any(member.lock_count for member in subtree):
                deferred[node] = None
                continue
            for member in subtree:
                reason = MissReason.EXPIRED if member.is_expired(now) else MissReason.EVICTED
                evictions.append(self._remove(member, reason))
        for node in deferred:
            self._expiry.push(node)
        return evictions

    def _remove(self, node: Node, reason: MissReason) -> Eviction:
        parent = node.parent
        self._unlink(node)
        self._count(node, -1)
        self._bury(node.chain_key, reason)
        self._lru.push(parent)  # type: ignore[arg-type]  # it may just have become a leaf
        return Eviction(node.scope, node.key, len(node.token_ids), node.num_bytes, reason)  # type: ignore[arg-type]

    def _unlink(self, node: Node) -> None:
        del node.parent.children[node.child_id]  # type: ignore[union-attr]
        node.payload = None

    def _count(self, node: Node, sign: int) -> None:
        totals = self._totals[node.scope]
        totals.num_bytes += sign * node.num_bytes
        totals.num_nodes += sign
        totals.pinned_bytes += sign * node.num_bytes if node.pinned else 0
        self._pinned_bytes += sign * node.num_bytes if node.pinned else 0
        self._used_bytes += sign * node.num_bytes
        self._num_nodes += sign

    def _pop_victim(self) -> Node | None:
        """The next leaf to evict: the oldest of all, or with shares the oldest of the scope furthest over."""
        if self.shares is None or self.shares.lru_only:
            return self._lru.pop()
        share = self.shares.share(self.capacity_bytes, self._num_active())  # the same for every scope holding bytes
        return self._lru.pop(lambda scope: share - self._totals[scope].num_bytes)

    def _num_active(self) -> int:
        """Scopes holding bytes: the ones the budget is shared between."""
        return sum(1 for totals in self._totals.values() if totals.num_bytes)

    def _bury(self, key: ChainKey, reason: MissReason) -> None:
        if self.max_tombstones == 0:
            return
        self._tombstones[key] = reason
        self._tombstones.move_to_end(key)
        while len(self._tombstones) > self.max_tombstones:
            self._tombstones.popitem(last=False)

    def _set_expiry(self, node: Node, now: float, ttl_seconds: float | None) -> None:
        node.expires_at = None if ttl_seconds is None else now + ttl_seconds
        self._expiry.push(node)

    def _is_live(self, node: Node) -> bool:
        # Removal unlinks a node from its parent, children first, so "linked to its parent" means live.
        if node.parent is None:
            return self._roots.get(node.scope) is node
        return node.parent.children.get(node.child_id) is node

    def _is_lru_candidate(self, node: Node) -> bool:
        return (node.parent is not None and not node.children and node.lock_count == 0 and not node.pinned
                and self._is_live(node))

    def _has_expiry(self, node: Node) -> bool:
        return node.parent is not None and node.expires_at is not None and self._is_live(node)

    def _require_live(self, nodes: Iterable[Node], roots: bool = True) -> list[Node]:
        nodes = list(nodes)
        for node in nodes:
            if not self._is_live(node):
                raise ValueError(f"node {node.name} is no longer in the cache (evicted or its scope removed); "
                                 "lock a matched chain before using it")
            if node.is_root and not roots:
                raise ValueError("a scope root cannot be pinned or given a ttl; pass the matched nodes instead")
        return nodes


def _require_non_negative(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _bytes_by_scope(nodes: Iterable[Node]) -> Counter:
    counts: Counter = Counter()
    for node in nodes:
        counts[node.scope] += node.num_bytes
    return counts
