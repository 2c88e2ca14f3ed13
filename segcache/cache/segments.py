"""The text of segments a tenant has sent, so later requests may refer to them by hash alone.

Kept apart from the KV tree: text is small and cheap to keep long after its KV was evicted, so a
hash-only request after an eviction still works (it is recomputed, not rejected). Each tenant has a
capacity of its own, so one tenant's texts can never push out another's.
"""

from __future__ import annotations

from collections import OrderedDict

from segcache.cache.keys import SegmentHash


class SegmentStore:
    """Per-tenant LRU maps of segment hash -> content, each bounded by `capacity_bytes` of UTF-8."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._tenants: dict[str, OrderedDict[SegmentHash, str]] = {}
        self._used: dict[str, int] = {}

    @property
    def used_bytes(self) -> int:
        """All tenants together."""
        return sum(self._used.values())

    def tenant_bytes(self, tenant: str) -> int:
        return self._used.get(tenant, 0)

    def put(self, tenant: str, hash_: SegmentHash, content: str) -> None:
        entries = self._tenants.setdefault(tenant, OrderedDict())
        if hash_ in entries:
            entries.move_to_end(hash_)
            return
        size = len(content.encode())
        if size > self.capacity_bytes:
            return  # too big to remember; the request itself still works
        entries[hash_] = content
        self._used[tenant] = self._used.get(tenant, 0) + size
        while self._used[tenant] > self.capacity_bytes:
            dropped_hash, dropped = entries.popitem(last=False)
            self._used[tenant] -= len(dropped.encode())
            self._dropped(tenant, dropped_hash)

    def get(self, tenant: str, hash_: SegmentHash) -> str | None:
        entries = self._tenants.get(tenant)
        content = entries.get(hash_) if entries is not None else None
        if content is not None:
            entries.move_to_end(hash_)  # type: ignore[union-attr]
        return content

    def clear(self, tenant: str) -> None:
        self._tenants.pop(tenant, None)
        self._used.pop(tenant, None)

    def _dropped(self, tenant: str, hash_: SegmentHash) -> None:
        """Called when the LRU drops a text (a persistent store forgets it too)."""

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._tenants.values())
