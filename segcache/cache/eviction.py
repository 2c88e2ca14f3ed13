"""Which leaf goes next: one LRU heap per scope, so eviction can choose whom to take from.

Without shares the oldest candidate of any scope goes (one global LRU). With shares the scope
furthest over its share gives up its oldest candidate; ties go to the older leaf.
"""

from __future__ import annotations

from collections.abc import Callable

from segcache.cache.heap import LazyHeap
from segcache.cache.keys import ScopeKey
from segcache.cache.node import Node


class EvictionOrder:
    def __init__(self, is_candidate: Callable[[Node], bool]):
        self._is_candidate = is_candidate
        self._heaps: dict[ScopeKey, LazyHeap] = {}

    def add_scope(self, scope: ScopeKey) -> None:
        self._heaps[scope] = LazyHeap(lambda node: node.last_access, self._is_candidate)

    def remove_scope(self, scope: ScopeKey) -> None:
        del self._heaps[scope]

    def scopes(self) -> set[ScopeKey]:
        return set(self._heaps)

    def push(self, node: Node) -> None:
        """Record `node` (if it is a candidate) at its current last_access."""
        heap = self._heaps.get(node.scope)
        if heap is not None:
            heap.push(node)

    def pop(self, room_left: Callable[[ScopeKey], int] | None = None) -> Node | None:
        """Remove and return the next victim, or None if no scope has a candidate.

        `room_left(scope)`: its share minus its bytes (negative when over); None for one global LRU.
        """
        best: tuple[tuple[float, ...], LazyHeap] | None = None
        for scope, heap in self._heaps.items():
            if (node := heap.peek()) is None:
                continue
            rank = (node.last_access,) if room_left is None else (room_left(scope), node.last_access)
            if best is None or rank < best[0]:
                best = (rank, heap)
        return best[1].pop() if best is not None else None

    def candidates(self) -> set[Node]:
        """Nodes with a valid entry in any heap (O(n), for invariant checks)."""
        return set().union(*(heap.candidates() for heap in self._heaps.values()))

    def __len__(self) -> int:
        """Entries held in all heaps, stale ones included."""
        return sum(len(heap) for heap in self._heaps.values())
