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


class Registry:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], NamedSegment] = {}

    def put(self, tenant: str, name: str, content: str, tokens: int, ttl_seconds: float | None = None,
            pin: bool = False) -> NamedSegment:
        entry = NamedSegment(name, content, segment_hash(content), tokens, ttl_seconds, pin, time.time())
        self._entries[(tenant, name)] = entry
        return entry

    def get(self, tenant: str, name: str) -> NamedSegment | None:
        return self._entries.get((tenant, name))

    def delete(self, tenant: str, name: str) -> bool:
        return self._entries.pop((tenant, name), None) is not None

    def list(self, tenant: str) -> list[NamedSegment]:
        return sorted((e for (t, _), e in self._entries.items() if t == tenant), key=lambda e: e.name)
