"""The one owner of the cache tree: its lock, its scopes and its eviction observers.

The scheduler (acquire a matched chain, extend it part by part, release it) and the cache routes
(inspect, clear, metrics) both call this object; nothing else touches the tree or takes its lock.
The tree's own policy (matching, eviction order, expiry) stays in cache/tree.py; this module only
sequences calls to it and reports what was evicted.

    acquire(scope, parts)  ->  matched chain, locked and touched      (before prefill)
    extend(parent, part)   ->  the new node, locked                    (after each computed part)
    release(nodes)                                                     (when prefill ends or is cancelled)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from segcache.cache.keys import ScopeKey
from segcache.cache.tree import (Eviction, MatchResult, MissReason, Node, NodeLockedError, PartSpec, PinQuotaError,
                                 SegmentTree)
from segcache.engine.prompt import PromptError
from segcache.engine.tiers import RAM, Tiers

T = TypeVar("T")
EvictionObserver = Callable[[list[Eviction]], None]


@dataclass(frozen=True)
class Acquired:
    """A matched chain, locked until released; `parent` is where the first computed part goes."""
    scope: ScopeKey
    match: MatchResult
    parent: Node
    tiers: tuple[str, ...] = ()   # per matched node: where its KV came from (ram | disk)


@dataclass(frozen=True)
class CacheUsage:
    used_bytes: int
    num_nodes: int
    capacity_bytes: int


class CacheInUseError(RuntimeError):
    """A running request holds nodes of the scope to be cleared."""


class CacheManager:
    def __init__(self, tree: SegmentTree, scope_of: Callable[[str], ScopeKey], enabled: bool,
                 tiers: Tiers | None = None):
        """`scope_of(tenant)`: the tenant's scope under the served model; `enabled`: False = --cache-bytes 0;
        `tiers`: where nodes spill to and load from below RAM (None: RAM only)."""
        self.tree = tree
        self.tiers = tiers if enabled else None
        self.scope_of = scope_of
        self.enabled = enabled
        self.observers: list[EvictionObserver] = []
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- a request's chain

    def acquire(self, tenant: str, parts: Sequence[PartSpec], ttls: Sequence[float | None],
                pin_cost: Callable[[MatchResult], int] | None = None) -> Acquired:
        """Match `parts` (nothing when caching is off), lock and touch the chain, slide its ttls.

        `pin_cost(match)`: the pin bytes the request will need; if the tenant has no room for them, raise
        pin_quota_exceeded before anything changes."""
        scope = self.scope_of(tenant)
        with self._lock:
            self._notify(self.tree.evict(0))
            match = self.tree.match(scope, parts) if self.enabled else MatchResult([], 0, None)
            loaded = self._load_below(scope, parts, match)
            if loaded:
                match = self.tree.match(scope, parts)
            if pin_cost is not None and (needed := pin_cost(match)) > (room := self.tree.pin_room(scope)):
                raise pin_quota_error(needed, room, self.tree.pinned_bytes(scope))
            self.tree.lock(match.nodes)
            self.tree.touch(match.nodes)
            for node, ttl in zip(match.nodes, ttls):
                if ttl is not None:
                    self.tree.set_ttl([node], ttl)
            parent = match.nodes[-1] if match.nodes else self.tree.root(scope)
            if self.tiers is not None:
                self.tiers.touch(match.nodes)
        return Acquired(scope, match, parent, tuple(loaded.get(n, RAM) for n in match.nodes))

    def extend(self, parent: Node, part: PartSpec, payload: object, num_bytes: int,
               ttl: float | None) -> Node | None:
        """Cache a computed part under `parent` and lock it. None when the parent left the tree meanwhile
        (the tenant cleared its cache): the request still completes, its later parts are just not cached."""
        with self._lock:
            if not self.tree.contains(parent):
                return None
            # Make room first, so the budget holds during the request too (only running requests'
            # locked chains can push past it, and only until they finish).
            overflow = self.tree.used_bytes + num_bytes - self.tree.capacity_bytes
            if overflow > 0:
                self._notify(self.tree.evict(overflow))
            node = self.tree.insert(parent, part, payload, num_bytes, ttl_seconds=ttl)
            self.tree.lock([node])
            self.tree.touch([node], hit=False)
            if self.tiers is not None and node.payload is payload:   # new here, not a concurrent twin
                self.tiers.spill(node)
        return node

    def release(self, nodes: Sequence[Node]) -> None:
        with self._lock:
            self.tree.unlock(nodes)

    def pin(self, scope: ScopeKey, chain: Sequence[Node]) -> None:
        """Pin within the tenant's room (its guaranteed share, and the budget for all tenants together)."""
        with self._lock:
            try:
                self.tree.pin(chain)
            except PinQuotaError as exc:  # checked in acquire; only a concurrent change lands here
                raise pin_quota_error(exc.needed, exc.room, self.tree.pinned_bytes(scope)) from exc
            if self.tiers is not None:
                self.tiers.set_pinned(chain, True)

    def unpin(self, chain: Sequence[Node]) -> int:
        with self._lock:
            if self.tiers is not None:
                self.tiers.set_pinned(chain, False)
            return self.tree.unpin(chain)

    def unpin_tenant(self, tenant: str) -> int:
        """Unpin every node of the tenant's scope; the bytes unpinned."""
        scope = self.scope_of(tenant)
        with self._lock:
            if self.tiers is not None:
                self.tiers.unpin_scope(scope)
            return self.tree.unpin_scope(scope) if scope in self.tree.scopes() else 0

    def evict_to_capacity(self) -> None:
        with self._lock:
            self._notify(self.tree.evict_to_capacity())

    # ---------------------------------------------------------------- the cache routes

    def clear(self, tenant: str) -> int:
        """Drop the tenant's scope; the bytes freed. Raises CacheInUseError if a request holds part of it."""
        scope = self.scope_of(tenant)
        with self._lock:
            try:
                freed = self.tree.remove_scope(scope) if scope in self.tree.scopes() else 0
            except NodeLockedError as exc:
                raise CacheInUseError(str(exc)) from exc
            if self.tiers is not None:
                self.tiers.clear_scope(scope)
            return freed

    def inspect(self, tenant: str, describe: Callable[[int, Node], T], check: bool = False) -> list[T]:
        """describe(depth, node) for each of the tenant's nodes, read under the lock; `check` first
        verifies the whole tree and the budget (AssertionError naming the broken invariant)."""
        scope = self.scope_of(tenant)
        with self._lock:
            if check:
                self.tree.check(within_budget=True)
            if scope not in self.tree.scopes():
                return []
            return [describe(depth, node) for depth, node in self.tree.iter_nodes(scope)]

    def render_text(self, tenant: str) -> str:
        scope = self.scope_of(tenant)
        with self._lock:
            return self.tree.render_text(scope) if scope in self.tree.scopes() else "(empty)\n"

    def check(self) -> None:
        with self._lock:
            self.tree.check()

    def usage(self) -> CacheUsage:
        with self._lock:
            return CacheUsage(self.tree.used_bytes, self.tree.num_nodes, self.tree.capacity_bytes)

    def read(self, look: Callable[[SegmentTree], T]) -> T:
        """look(tree) under the lock, for figures that need several reads to agree (metrics)."""
        with self._lock:
            return look(self.tree)

    def evict(self, num_bytes: int) -> None:
        """Free at least `num_bytes` of unlocked, unpinned nodes (operators and tests)."""
        with self._lock:
            self._notify(self.tree.evict(num_bytes))

    def tiers_of(self, node: Node) -> list[str]:
        """Where a node of the tree lives (call inside inspect's describe, under the lock)."""
        return self.tiers.locations([node])[node] if self.tiers is not None else [RAM]

    def _load_below(self, scope: ScopeKey, parts: Sequence[PartSpec], match: MatchResult) -> dict[Node, str]:
        """Insert the parts after `match` that a lower tier holds, in order, until one misses; the loaded
        nodes and the tier each came from.

        Only a position never seen or evicted here is looked up (an expired one stays a miss; a boundary
        miss has other token ids). The chain is locked while room is made, so loading never evicts it."""
        if self.tiers is None or match.miss_reason not in (MissReason.NEW, MissReason.EVICTED):
            return {}
        parent = match.nodes[-1] if match.nodes else self.tree.root(scope)
        held, loaded = list(match.nodes), {}
        self.tree.lock(held)
        try:
            for part in parts[len(match.nodes):]:
                found = self.tiers.load(scope, parent, part)
                if found is None:
                    break
                overflow = self.tree.used_bytes + found.num_bytes - self.tree.capacity_bytes
                if overflow > 0:
                    self._notify(self.tree.evict(overflow))
                ttl = None if found.expires_at is None else max(0.0, found.expires_at - time.time())
                parent = self.tree.insert(parent, part, found.payload, found.num_bytes, ttl_seconds=ttl)
                self.tree.lock([parent])
                held.append(parent)
                loaded[parent] = found.tier
                if found.pinned and parent.num_bytes <= self.tree.pin_room(scope):
                    self.tree.pin([parent])   # pins survive a restart while the tenant has room for them
        finally:
            self.tree.unlock(held)
        return loaded

    def _notify(self, evictions: list[Eviction]) -> None:
        if evictions:
            for observer in self.observers:
                observer(evictions)


def pin_quota_error(needed: int, room: int, pinned: int) -> PromptError:
    return PromptError(
        f"pinning these segments needs {needed} more bytes of KV, but this tenant may pin only {room} more "
        f"(it pins {pinned}; pins are limited to the tenant's guaranteed cache share and, for all tenants "
        "together, to the cache budget). Nothing was cached or pinned: unpin with DELETE /v1/cache/pins, "
        "pin fewer segments, or warm without pin", "pin_quota_exceeded", param="pin", status=409)
