"""Segment texts and registry names in the shared store, so every replica resolves what one was sent.

Without this, a hash-only reference or a registry name that a router sends to another replica than the
one that saw the text is a 400 `segment_not_found`. With `--shared-cache`:

    segcache:text:<tenant id>:<sha256 hex>   the segment's UTF-8 text        written behind, read on a local miss
    segcache:name:<tenant id>:<name>         a registry entry as JSON        written at once, read first
                                             ({"deleted": true} once deleted, so replicas drop their copy)

The tenant id is a SHA-256 of the tenant's name: every key carries the tenant, as the KV keys carry the
scope, and the value repeats it. A value whose tenant, name or hash does not match what was asked is
ignored, so tenant B never reads tenant A's text or name even with A's exact key. The store stays a
cache: when it is down every call is a local miss or a no-op (SharedTier warns and counts), and its
LRU may drop an entry (a text is then resent by the client; a name lives on in the replicas that saw it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from segcache.cache.keys import SegmentHash, segment_hash
from segcache.cache.registry import NamedSegment, Registry
from segcache.cache.segments import SegmentStore
from segcache.cache.shared import SharedTier


@dataclass(frozen=True)
class Deleted:
    """What the store holds for a name deleted on some replica."""
    name: str


def tenant_id(tenant: str) -> str:
    return hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:32]


def text_key(tenant: str, hash_: str) -> str:
    return f"segcache:text:{tenant_id(tenant)}:{hash_.removeprefix('sha256:')}"


def name_key(tenant: str, name: str) -> str:
    return f"segcache:name:{tenant_id(tenant)}:{name}"


class SharedSegmentStore:
    """A replica's own SegmentStore, backed by the shared store's copy of every tenant's texts."""

    def __init__(self, local: SegmentStore, shared: SharedTier):
        self.local, self.shared = local, shared

    def put(self, tenant: str, hash_: SegmentHash, content: str) -> None:
        if self.local.get(tenant, hash_) is None:   # new here: tell the other replicas once
            self.shared.write_later(text_key(tenant, hash_), content.encode("utf-8"))
        self.local.put(tenant, hash_, content)

    def get(self, tenant: str, hash_: SegmentHash) -> str | None:
        content = self.local.get(tenant, hash_)
        if content is not None:
            return content
        raw = self.shared.read(text_key(tenant, hash_))
        if raw is None:
            return None
        content = raw.decode("utf-8", errors="replace")
        if segment_hash(content) != hash_:   # damaged, or not this text: a miss, never a wrong text
            return None
        self.local.put(tenant, hash_, content)
        return content

    def clear(self, tenant: str) -> None:
        self.local.clear(tenant)
        self.shared.delete(*self.shared.keys(text_key(tenant, "*")))

    def tenant_bytes(self, tenant: str) -> int:
        return self.local.tenant_bytes(tenant)

    @property
    def used_bytes(self) -> int:
        return self.local.used_bytes

    def __len__(self) -> int:
        return len(self.local)


class SharedRegistry:
    """A replica's own Registry, with the shared store's entry taking precedence (the latest PUT anywhere)."""

    def __init__(self, local: Registry, shared: SharedTier):
        self.local, self.shared = local, shared

    def check_room(self, tenant: str, name: str, content: str) -> None:
        self.local.check_room(tenant, name, content)

    def put(self, tenant: str, name: str, content: str, tokens: int, ttl_seconds: float | None = None,
            pin: bool = False) -> NamedSegment:
        entry = self.local.put(tenant, name, content, tokens, ttl_seconds, pin)
        self.shared.write(name_key(tenant, name), _dump(tenant, entry))
        return entry

    def get(self, tenant: str, name: str) -> NamedSegment | None:
        raw = self.shared.read(name_key(tenant, name))
        found = _load(raw, tenant, name) if raw is not None else None
        if found is None:   # store down, entry evicted, or never shared: what this replica knows
            return self.local.get(tenant, name)
        if isinstance(found, Deleted):
            self.local.delete(tenant, name)
            return None
        return found

    def delete(self, tenant: str, name: str) -> bool:
        existed = self.get(tenant, name) is not None
        self.local.delete(tenant, name)
        tombstone = {"tenant": tenant, "name": name, "deleted": True}
        self.shared.write(name_key(tenant, name), json.dumps(tombstone).encode("utf-8"))
        return existed

    def list(self, tenant: str) -> list[NamedSegment]:
        entries = {e.name: e for e in self.local.list(tenant)}
        for key in self.shared.keys(name_key(tenant, "*")):
            name = key.split(":", 3)[3]
            raw = self.shared.read(key)
            found = _load(raw, tenant, name) if raw is not None else None
            if isinstance(found, Deleted):
                entries.pop(name, None)
            elif found is not None:
                entries[name] = found
        return sorted(entries.values(), key=lambda e: e.name)


def _dump(tenant: str, entry: NamedSegment) -> bytes:
    return json.dumps({"tenant": tenant, "name": entry.name, "content": entry.content, "hash": entry.hash,
                       "tokens": entry.tokens, "ttl_seconds": entry.ttl_seconds, "pin": entry.pin,
                       "updated_at": entry.updated_at}).encode("utf-8")


def _load(raw: bytes, tenant: str, name: str) -> NamedSegment | Deleted | None:
    """The entry, Deleted, or None when the value is unreadable or belongs to another tenant or name."""
    try:
        value = json.loads(raw)
        if value["tenant"] != tenant or value["name"] != name:
            return None
        if value.get("deleted"):
            return Deleted(name)
        entry = NamedSegment(name, value["content"], SegmentHash(value["hash"]), int(value["tokens"]),
                             value["ttl_seconds"], bool(value["pin"]), float(value["updated_at"]))
    except (ValueError, KeyError, TypeError):
        return None
    return entry if segment_hash(entry.content) == entry.hash else None
