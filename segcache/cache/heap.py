"""A min-heap of nodes whose priorities change, with stale entries skipped when they surface."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from segcache.cache.node import Node

_MIN_COMPACT_AT = 64


class LazyHeap:
    """Min-heap of nodes by `priority(node)`, holding only nodes for which `is_candidate(node)` is true.

    Why lazy: a node's priority (last access, expiry) changes on every touch, and a binary heap cannot
    update an entry in place without an index. Instead, whenever a node may have become a candidate or
    changed priority the caller pushes it again (O(log n)); an entry whose node is no longer a candidate,
    or whose priority no longer agrees with the node, is dropped when it reaches the top. Compaction keeps
    the garbage below half the heap, so every operation is O(log n) amortised.
    """

    def __init__(self, priority: Callable[[Node], float], is_candidate: Callable[[Node], bool]):
        self._priority = priority
        self._is_candidate = is_candidate
        self._entries: list[tuple[float, int, Node]] = []  # (priority, push order as tie-break, node)
        self._order = itertools.count()
        self._compact_at = _MIN_COMPACT_AT

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._entries)

    def push(self, node: Node) -> None:
        """Record `node` at its current priority; does nothing unless it is a candidate."""
        if not self._is_candidate(node):
            return
        heapq.heappush(self._entries, (self._priority(node), next(self._order), node))
        if len(self._entries) > self._compact_at:
            self._compact()

    def pop(self, limit: float | None = None) -> Node | None:
        """Remove and return the candidate of lowest priority, or None if there is none at or below `limit`."""
        while self._entries:
            priority, _, node = self._entries[0]
            if not self._is_valid(priority, node):
                heapq.heappop(self._entries)
            elif limit is not None and priority > limit:
                return None
            else:
                heapq.heappop(self._entries)
                return node
        return None

    def peek(self) -> Node | None:
        """The candidate pop() would return, left in place."""
        while self._entries and not self._is_valid(self._entries[0][0], self._entries[0][2]):
            heapq.heappop(self._entries)
        return self._entries[0][2] if self._entries else None

    def candidates(self) -> set[Node]:
        """Nodes with a valid entry (O(n), for invariant checks)."""
        return {node for priority, _, node in self._entries if self._is_valid(priority, node)}

    def _is_valid(self, priority: float, node: Node) -> bool:
        return self._is_candidate(node) and self._priority(node) == priority

    def _compact(self) -> None:
        kept: dict[Node, tuple[float, int, Node]] = {}
        for entry in self._entries:
            if entry[2] not in kept and self._is_valid(entry[0], entry[2]):
                kept[entry[2]] = entry
        self._entries = list(kept.values())
        heapq.heapify(self._entries)
        self._compact_at = max(_MIN_COMPACT_AT, 2 * len(self._entries))
