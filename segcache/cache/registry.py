"""Named segments: a tenant's name -> current content, so a changed block is one PUT for every agent."""

from __future__ import annotations

import time
from dataclasses import dataclass

from segcache.cache.keys import SegmentHash, segment_hash


@dataclass(frozen=True)
class NamedSegment:
    name: str
    content: str
    hash: SegmentHash
    tokens: int
    ttl_seconds: float | None
    pin: bool
    updated_at: float

    @property
    def num_bytes(self) -> int:
        return len(self.content.encode("utf-8"))


class RegistryFullError(ValueError):
    """The tenant's registry has no room for this entry (count or bytes); nothing was stored."""


class Registry:
    """Per-tenant names, each tenant bounded by `max_entries` and `max_bytes` of content (None: unbounded)."""

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: dict[tuple[str, str], NamedSegment] = {}

    def check_room(self, tenant: str, name: str, content: str) -> None:
        """Raise RegistryFullError if put(tenant, name, content) would pass the tenant's limits."""
        others = [e for e in self.list(tenant) if e.name != name]
        if self.max_entries is not None and len(others) + 1 > self.max_entries:
            raise RegistryFullError(f"this tenant already has {len(others)} named segments, the most allowed is "
                                    f"{self.max_entries}; delete some with DELETE /v1/segments/<name>")
        size = len(content.encode("utf-8"))
        held = sum(e.num_bytes for e in others)
        if self.max_bytes is not None and held + size > self.max_bytes:
            raise RegistryFullError(f"this segment has {size} bytes and the tenant's other named segments "
                                    f"{held}; together they may hold {self.max_bytes}. Delete some or send a "
                                    "smaller segment")

    def put(self, tenant: str, name: str, content: str, tokens: int, ttl_seconds: float | None = None,
            pin: bool = False) -> NamedSegment:
        self.check_room(tenant, name, content)
        entry = NamedSegment(name, content, segment_hash(content), tokens, ttl_seconds, pin, time.time())
        self._entries[(tenant, name)] = entry
        return entry

    def get(self, tenant: str, name: str) -> NamedSegment | None:
        return self._entries.get((tenant, name))

    def delete(self, tenant: str, name: str) -> bool:
        return self._entries.pop((tenant, name), None) is not None

    def list(self, tenant: str) -> list[NamedSegment]:
        return sorted((e for (t, _), e in self._entries.items() if t == tenant), key=lambda e: e.name)
