"""HTTP routes: parse, call the engine, map the result to JSON or SSE. No caching logic here."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, Finished, PromptReport, SegmentInput, TextDelta
from segcache.server import protocol
from segcache.server.errors import ApiError
from segcache.server.limits import check_prompt_limits
from segcache.server.protocol import ChatCompletionRequest, CompletionRequest
from segcache.server.segments import remember_segments, resolve_segments
from segcache.server.services import Services, services_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    """Anyone: ok. A tenant's key: its own queued requests and the batching verdict. The admin key (or a
    single-tenant server): the server and every tenant."""
    services = services_of(request)
    engine = services.engine
    batching = {"mode": engine.batching.mode, "batched": engine.batching.batched, "reason": engine.batching.reason,
                "max_batch": services.config.max_batch}
    if services.is_admin(request) or not services.keys.multi_tenant:   # one tenant: it may see everything
        figures = services.figures()
        return {"status": "ok", "model": engine.loaded.model_id, "cache_enabled": services.config.cache_enabled,
                "queue_depth": figures.queue_depth, "cache_bytes": figures.cache_bytes,
                "capacity_bytes": figures.capacity_bytes, "batching": batching,
                "tenants": [asdict(t) for t in figures.tenants]}
    if not request.headers.get("authorization"):
        return {"status": "ok"}
    tenant = services.tenant(request)
    return {"status": "ok", "model": engine.loaded.model_id, "tenant": tenant, "queued": engine.queued(tenant),
            "batching": batching}


@router.get("/v1/models")
async def models(request: Request) -> dict:
    services = services_of(request)
    services.tenant(request)
    loaded = services.engine.loaded
    return {"object": "list", "data": [{
        "id": loaded.model_id, "object": "model", "created": services.started_at, "owned_by": "segcache",
        "dtype": loaded.dtype_name, "context_length": loaded.max_context}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    if (tools := body.tools_text()) is not None:
        segments += (SegmentInput(SegmentText(tools, "tools", segment_hash(tools))),)
    messages, sampling = body.plain_messages(), body.sampling(services.config.max_tokens_default)
    check_prompt_limits(services.config, segments, [m["content"] for m in messages], len(messages), sampling.stop)
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", messages=messages, segments=segments, sampling=sampling,
        reject_split=body.segment_boundary == "reject")
    return await _generate(services, engine_request, body, chat=True, http=request)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    sampling = body.sampling(16)
    check_prompt_limits(services.config, segments, [body.prompt_text()], 0, sampling.stop)
    engine_request = EngineRequest(
        tenant=tenant, kind="completion", prompt=body.prompt_text(), segments=segments,
        sampling=sampling, reject_split=body.segment_boundary == "reject")
    return await _generate(services, engine_request, body, chat=False, http=request)


# ---------------------------------------------------------------- generation


async def _generate(services: Services, engine_request: EngineRequest, body, chat: bool, http: Request | None = None):
    started = time.perf_counter()
    events = services.engine.stream(engine_request).__aiter__()
    report = await events.__anext__()      # prompt errors surface here, before any byte is sent
    assert isinstance(report, PromptReport)
    remember_segments(engine_request.segments, engine_request.tenant, services.engine.segment_store)
    id_ = protocol.new_id("chatcmpl" if chat else "cmpl")
    model = services.engine.loaded.model_id
    run = _Run(services, engine_request, report, started)
    if body.stream:
        return StreamingResponse(_sse(run, events, id_, model, chat, body.include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if not await _collect(events, run, http):
        return JSONResponse({}, status_code=499)   # nobody is listening; the engine has stopped
    make = protocol.chat_completion if chat else protocol.text_completion
    return JSONResponse(make(id_, model, run.finished.text, run.finished.finish_reason, run.usage(), run.timings()))


async def _collect(events: AsyncIterator, run: "_Run", http: Request | None) -> bool:
    """Observe every event; False if the client went away first, in which case the engine stream is
    closed (which cancels the job within one decode step), as a dropped SSE stream does."""
    async def consume() -> None:
        async for event in events:
            run.observe(event)

    consuming = asyncio.ensure_future(consume())
    watching = asyncio.ensure_future(_disconnected(http)) if http is not None else None
    try:
        await asyncio.wait([t for t in (consuming, watching) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        if consuming.done():
            consuming.result()
            return True
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)   # its generator's finally cancels the job
        return False
    finally:
        if watching is not None:
            watching.cancel()
        await events.aclose()


async def _disconnected(http: Request) -> None:
    """Returns once the client has closed its connection (the body is already read)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _sse(run: "_Run", events: AsyncIterator, id_: str, model: str, chat: bool,
               include_usage: bool) -> AsyncIterator[str]:
    try:
        if chat:
            yield _data(protocol.chat_chunk(id_, model, {"role": "assistant", "content": ""}))
        async for event in events:
            run.observe(event)
            run.services.shutdown.raise_if_overdue()
            if isinstance(event, TextDelta):
                yield _data(protocol.chat_chunk(id_, model, {"content": event.text}) if chat
                            else protocol.text_chunk(id_, model, event.text))
        reason = run.finished.finish_reason
        yield _data(protocol.chat_chunk(id_, model, {}, reason) if chat else protocol.text_chunk(id_, model, "", reason))
        if include_usage:
            object_ = "chat.completion.chunk" if chat else "text_completion"
            chunk = protocol.usage_chunk(id_, model, object_, run.usage())
            chunk["timings"] = run.timings()
            yield _data(chunk)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # headers are gone: report in-band, as OpenAI does
        error = exc if isinstance(exc, ApiError) else ApiError(500, f"internal error: {exc}", "internal_error")
        yield _data(error.body())
    finally:
        await events.aclose()


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Run:
    """What one generation observed: first-token time, the final event, and the trace record."""

    def __init__(self, services: Services, request: EngineRequest, report: PromptReport, started: float):
        self.services, self.request, self.report, self.started = services, request, report, started
        self.first_token_at: float | None = None
        self.finished: Finished | None = None
        services.observe_prompt(request.tenant, report)

    def observe(self, event) -> None:
        if isinstance(event, TextDelta) and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        elif isinstance(event, Finished):
            self.finished = event
            self.services.observe_finished(self.request, self.report, event, self.timings())

    def usage(self) -> dict:
        return protocol.usage(self.report, self.finished.completion_tokens if self.finished else 0)

    def timings(self) -> dict:
        now = time.perf_counter()
        first = self.first_token_at or now
        return {"queue_s": round(self.report.queue_s, 6), "prefill_s": round(self.report.prefill_s, 6),
                "ttft_s": round(first - self.started, 6),
                "decode_s": round(self.finished.decode_s, 6) if self.finished else None,
                "total_s": round(now - self.started, 6)}
