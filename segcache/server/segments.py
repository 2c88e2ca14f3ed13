"""Turn a request's segment references (content, hash or name) into text, or a precise 400."""

from __future__ import annotations

from segcache.cache.keys import parse_segment_hash, segment_hash
from segcache.cache.registry import Registry
from segcache.cache.segments import SegmentStore
from segcache.engine.prompt import SegmentText
from segcache.engine.request import SegmentInput
from segcache.server.errors import ApiError
from segcache.server.protocol import SegmentRef


def resolve_segments(refs: list[SegmentRef], tenant: str, store: SegmentStore, registry: Registry,
                     default_ttl: float | None = None) -> tuple[SegmentInput, ...]:
    """Resolve every reference; stores nothing (see remember_segments)."""
    return tuple(_resolve(ref, i, tenant, store, registry) for i, ref in enumerate(refs))


def remember_segments(segments: tuple[SegmentInput, ...], tenant: str, store: SegmentStore) -> None:
    """Keep the texts for later hash-only references: called once the engine has accepted the request,
    so a rejected request leaves the store as it was."""
    for segment in segments:
        if segment.text.hash is not None:
            store.put(tenant, segment.text.hash, segment.text.content)


def _resolve(ref: SegmentRef, index: int, tenant: str, store: SegmentStore, registry: Registry) -> SegmentInput:
    param = f"segments[{index}]"
    if ref.name is not None:
        entry = registry.get(tenant, ref.name)
        if entry is None:
            raise ApiError(400, f"{param}: no segment is registered under the name {ref.name!r}; "
                           f"create it with PUT /v1/segments/{ref.name}", "segment_not_found", f"{param}.name")
        ttl = ref.ttl_seconds if ref.ttl_seconds is not None else entry.ttl_seconds
        return SegmentInput(SegmentText(entry.content, ref.id or entry.name, entry.hash), ttl)
    claimed = _parse_hash(ref.hash, param) if ref.hash is not None else None
    if ref.content is not None:
        actual = segment_hash(ref.content)
        if claimed is not None and claimed != actual:
            raise ApiError(400, f"{param}: hash {claimed} does not match its content, whose sha256 is {actual}. "
                           "Hash the exact UTF-8 bytes you send", "segment_hash_mismatch", f"{param}.hash")
        return SegmentInput(SegmentText(ref.content, ref.id, actual), ref.ttl_seconds)
    content = store.get(tenant, claimed)
    if content is None:
        raise ApiError(400, f"{param}: this server does not know segment {claimed} (never sent, or forgotten); "
                       "send it again with its content", "segment_not_found", f"{param}.hash")
    return SegmentInput(SegmentText(content, ref.id, claimed), ref.ttl_seconds)


def _parse_hash(text: str, param: str):
    try:
        return parse_segment_hash(text)
    except ValueError as exc:
        raise ApiError(400, f"{param}.hash: {exc}", "invalid_segment_hash", f"{param}.hash") from exc
