"""Cache control routes: warm, inspect, clear, the named registry, metrics."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from segcache.cache.keys import segment_hash
from segcache.cache.registry import RegistryFullError
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, PromptReport, SegmentInput
from segcache.engine.cache_manager import CacheInUseError
from segcache.server import protocol
from segcache.server.errors import ApiError
from segcache.server.limits import check_prompt_limits
from segcache.server.protocol import RegistryPut, WarmRequest
from segcache.server.segments import remember_segments, resolve_segments
from segcache.server.services import Services, services_of

router = APIRouter()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@router.post("/v1/cache/warm")
async def warm(body: WarmRequest, request: Request) -> dict:
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    check_prompt_limits(services.config, segments)
    report = await _warm(services, tenant, segments, body.pin, body.segment_boundary == "reject", body.unpin)
    remember_segments(segments, tenant, services.engine.segment_store)
    cached = len(report.receipts) if services.config.cache_enabled else 0   # warm caches every segment it sends
    return {"object": "cache.warm", "model": services.engine.loaded.model_id, "cached_segments": cached,
            "root_hash": report.chain_hash, "expires_at": report.expires_at, "pinned": body.pin,
            "prompt_tokens": report.prompt_tokens, "cached_prefix_tokens": report.cached_tokens,
            "segments": [protocol.receipt_json(r) for r in report.receipts]}


async def _warm(services: Services, tenant: str, segments, pin: bool, reject_split: bool,
                unpin: bool = False) -> PromptReport:
    engine_request = EngineRequest(tenant=tenant, kind="warm", segments=segments, pin=pin, unpin=unpin,
                                   reject_split=reject_split)
    async for event in services.engine.stream(engine_request):
        if isinstance(event, PromptReport):
            return event
    raise ApiError(500, "the engine finished a warm request without a report", "internal_error")


@router.delete("/v1/cache/pins")
async def unpin_all(request: Request) -> dict:
    """Release every pin of this tenant: the nodes stay cached, now evictable like any other."""
    services = services_of(request)
    tenant = services.tenant(request)
    unpinned = services.engine.cache.unpin_tenant(tenant)
    return {"object": "cache.unpinned", "tenant": tenant, "unpinned_bytes": unpinned}


@router.get("/v1/cache")
async def inspect(request: Request, format: str = "json", check: bool = False):
    """This tenant's nodes; `check=true` also verifies the whole tree's invariants, the budget and the
    pin limits included (500 if broken)."""
    services = services_of(request)
    tenant = services.tenant(request)
    engine = services.engine
    scope = engine.scope(tenant)
    def describe(depth: int, node) -> dict:
        return {**_node_json(depth, node), "tiers": engine.cache.tiers_of(node)}

    try:
        nodes = engine.cache.inspect(tenant, describe, check=check)
    except AssertionError as exc:
        raise ApiError(500, f"cache invariant broken: {exc}", "cache_inconsistent") from exc
    if format == "text":
        return PlainTextResponse(engine.cache.render_text(tenant))
    return {"object": "cache", "tenant": tenant, **({"check": "ok"} if check else {}), "model": engine.loaded.model_id, "scope": scope,
            "num_nodes": len(nodes), "tokens": sum(n["tokens"] for n in nodes),
            "bytes": sum(n["bytes"] for n in nodes), "capacity_bytes": services.config.cache_bytes,
            "block_tokens": services.config.block_tokens,
            "nodes": nodes, **({"disk": _disk_json(engine.disk, scope)} if engine.disk is not None else {})}


@router.delete("/v1/cache")
async def clear(request: Request) -> dict:
    services = services_of(request)
    tenant = services.tenant(request)
    engine = services.engine
    try:
        freed = engine.cache.clear(tenant)
    except CacheInUseError as exc:
        raise ApiError(409, "a running request is using this cache; retry when it finishes",
                       "cache_in_use") from exc
    engine.segment_store.clear(tenant)
    return {"object": "cache.cleared", "tenant": tenant, "freed_bytes": freed}


# ---------------------------------------------------------------- registry


@router.put("/v1/segments/{name}")
async def put_segment(name: str, body: RegistryPut, request: Request) -> dict:
    services = services_of(request)
    tenant = services.tenant(request)
    _check_name(name)
    check_prompt_limits(services.config, texts=[body.content])
    _check_registry_room(services, tenant, name, body.content)
    # Every check that can refuse the PUT (size, pin quota, context) runs before anything is stored.
    tokenizer = services.engine.loaded.tokenizer
    tokens = len((await asyncio.to_thread(tokenizer, body.content, add_special_tokens=False))["input_ids"])
    segment = SegmentInput(SegmentText(body.content, name, segment_hash(body.content)), body.ttl_seconds)
    if body.pin:
        await _warm(services, tenant, (segment,), True, False)
    _check_registry_room(services, tenant, name, body.content)   # another PUT may have landed meanwhile
    entry = services.registry.put(tenant, name, body.content, tokens, body.ttl_seconds, body.pin)
    remember_segments((segment,), tenant, services.engine.segment_store)
    return _entry_json(entry)


def _check_registry_room(services: Services, tenant: str, name: str, content: str) -> None:
    try:
        services.registry.check_room(tenant, name, content)
    except RegistryFullError as exc:
        raise ApiError(413, str(exc), "registry_full", "content") from exc


@router.get("/v1/segments")
async def list_segments(request: Request) -> dict:
    services = services_of(request)
    tenant = services.tenant(request)
    return {"object": "list", "data": [_entry_json(e) for e in services.registry.list(tenant)]}


@router.get("/v1/segments/{name}")
async def get_segment(name: str, request: Request) -> dict:
    services = services_of(request)
    entry = services.registry.get(services.tenant(request), name)
    if entry is None:
        raise ApiError(404, f"no segment is registered under the name {name!r}", "segment_not_found", "name")
    return {**_entry_json(entry), "content": entry.content}


@router.delete("/v1/segments/{name}")
async def delete_segment(name: str, request: Request) -> dict:
    services = services_of(request)
    if not services.registry.delete(services.tenant(request), name):
        raise ApiError(404, f"no segment is registered under the name {name!r}", "segment_not_found", "name")
    return {"object": "segment.deleted", "name": name, "deleted": True}


# ---------------------------------------------------------------- metrics


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    services = services_of(request)
    services.metrics.observe_queue(services.engine.queue_snapshot())
    services.metrics.observe_decode(services.engine.decode_stats)
    if services.engine.disk is not None:
        services.metrics.observe_disk(services.engine.disk)
    if services.engine.shared is not None:
        services.metrics.observe_shared(services.engine.shared)
    text = services.metrics.render(services.figures(), services.viewer(request))
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ApiError(400, f"segment name {name!r} is not allowed: use 1-128 letters, digits, '.', '_', ':' "
                       "or '-', starting with a letter or digit", "invalid_segment_name", "name")


def _entry_json(entry) -> dict:
    return {"object": "segment", "name": entry.name, "hash": entry.hash, "tokens": entry.tokens,
            "ttl_seconds": entry.ttl_seconds, "pin": entry.pin, "updated_at": entry.updated_at}


def _disk_json(disk, scope: str) -> dict:
    """This tenant's nodes on disk (also those not in RAM now, e.g. after a restart)."""
    records = disk.manifest.nodes(scope)
    return {"num_nodes": len(records), "tokens": sum(len(r.token_ids) for r in records),
            "bytes": sum(r.file_bytes for r in records), "pinned": sum(1 for r in records if r.pinned)}


def _node_json(depth: int, node) -> dict:
    return {"depth": depth, "key": node.key, "part_key": node.part_key, "label": node.label, "start": node.start,
            "tokens": len(node.token_ids), "bytes": node.num_bytes, "hits": node.hits,
            "locked": node.lock_count > 0, "pinned": node.pinned, "expires_at": node.expires_at,
            "last_access": node.last_access, "children": len(node.children)}
