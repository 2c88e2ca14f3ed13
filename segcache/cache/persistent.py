"""The named registry and the segment texts, written through to the disk tier's manifest.

With --disk-cache a restarted server reloads both, so name references and hash-only references that
worked before a restart (or a kill -9) work after it. Without it the plain in-memory classes are used.
"""

from __future__ import annotations

from segcache.cache.keys import SegmentHash
from segcache.cache.manifest import Manifest, RegistryRecord
from segcache.cache.registry import NamedSegment, Registry
from segcache.cache.segments import SegmentStore


class PersistentRegistry(Registry):
    def __init__(self, manifest: Manifest, max_entries: int | None = None, max_bytes: int | None = None):
        super().__init__(max_entries, max_bytes)
        self.manifest = manifest
        for r in manifest.registry():
            self._entries[(r.tenant, r.name)] = NamedSegment(r.name, r.content, SegmentHash(r.hash), r.tokens,
                                                             r.ttl_seconds, r.pin, r.updated_at)

    def put(self, tenant: str, name: str, content: str, tokens: int, ttl_seconds: float | None = None,
            pin: bool = False) -> NamedSegment:
        entry = super().put(tenant, name, content, tokens, ttl_seconds, pin)
        self.manifest.put_registry(RegistryRecord(tenant, name, content, entry.hash, tokens, ttl_seconds, pin,
                                                  entry.updated_at))
        return entry

    def delete(self, tenant: str, name: str) -> bool:
        self.manifest.delete_registry(tenant, name)
        return super().delete(tenant, name)


class PersistentSegmentStore(SegmentStore):
    def __init__(self, manifest: Manifest, capacity_bytes: int):
        super().__init__(capacity_bytes)
        self.manifest = manifest
        for tenant, hash_, content in manifest.segments():
            super().put(tenant, SegmentHash(hash_), content)

    def put(self, tenant: str, hash_: SegmentHash, content: str) -> None:
        known = hash_ in self._tenants.get(tenant, {})
        super().put(tenant, hash_, content)
        if not known and hash_ in self._tenants.get(tenant, {}):
            self.manifest.put_segment(tenant, hash_, content)

    def clear(self, tenant: str) -> None:
        super().clear(tenant)
        self.manifest.delete_segments(tenant)

    def _dropped(self, tenant: str, hash_: SegmentHash) -> None:
        self.manifest.delete_segment(tenant, hash_)
