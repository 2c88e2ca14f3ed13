"""The text of segments a tenant has sent, so later requests may refer to them by hash alone.

Kept apart from the KV tree: text is small and cheap to keep long after its KV was evicted, so a
hash-only request after an eviction still works (it is recomputed, not rejected).
"""

from __future__ import annotations

from collections import OrderedDict

from segcache.cache.keys import SegmentHash


class SegmentStore:
    """Per-tenant LRU map of segment hash -> content, bounded by total UTF-8 bytes."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[tuple[str, SegmentHash], str] = OrderedDict()

    def put(self, tenant: str, hash_: SegmentHash, content: str) -> None:
        key = (tenant, hash_)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = len(content.encode())
        if size > self.capacity_bytes:
            return  # too big to remember; the request itself still works
        self._entries[key] = content
        self.used_bytes += size
        while self.used_bytes > self.capacity_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.used_bytes -= len(dropped.encode())

    def get(self, tenant: str, hash_: SegmentHash) -> str | None:
        key = (tenant, hash_)
        content = self._entries.get(key)
        if content is not None:
            self._entries.move_to_end(key)
        return content

    def clear(self, tenant: str) -> None:
        for key in [k for k in self._entries if k[0] == tenant]:
            self.used_bytes -= len(self._entries.pop(key).encode())

    def __len__(self) -> int:
        return len(self._entries)
