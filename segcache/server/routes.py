"""HTTP routes: parse, call the engine, map the result to JSON or SSE. No caching logic here."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, Finished, PromptReport, SegmentInput, TextDelta
from segcache.server import protocol
from segcache.server.errors import ApiError
from segcache.server.protocol import ChatCompletionRequest, CompletionRequest
from segcache.server.segments import resolve_segments
from segcache.server.services import Services, services_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    services = services_of(request)
    return {"status": "ok", "model": services.engine.loaded.model_id, "weights": services.engine.loaded.weights.format,
            "queue_depth": services.engine.queue_depth, "cache_enabled": services.config.cache_enabled}


@router.get("/v1/models")
async def models(request: Request) -> dict:
    services = services_of(request)
    services.tenant(request)
    loaded = services.engine.loaded
    return {"object": "list", "data": [{
        "id": loaded.model_id, "object": "model", "created": services.started_at, "owned_by": "segcache",
        "dtype": loaded.dtype_name, "weights": loaded.weights.format, "context_length": loaded.max_context}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    if (tools := body.tools_text()) is not None:
        segments += (SegmentInput(SegmentText(tools, "tools", segment_hash(tools))),)
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", messages=body.plain_messages(), segments=segments,
        sampling=body.sampling(services.config.max_tokens_default),
        reject_split=body.segment_boundary == "reject")
    return await _generate(services, engine_request, body, chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    engine_request = EngineRequest(
        tenant=tenant, kind="completion", prompt=body.prompt_text(),
        segments=resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry),
        sampling=body.sampling(16), reject_split=body.segment_boundary == "reject")
    return await _generate(services, engine_request, body, chat=False)


# ---------------------------------------------------------------- generation


async def _generate(services: Services, engine_request: EngineRequest, body, chat: bool):
    started = time.perf_counter()
    events = services.engine.stream(engine_request).__aiter__()
    report = await events.__anext__()      # prompt errors surface here, before any byte is sent
    assert isinstance(report, PromptReport)
    id_ = protocol.new_id("chatcmpl" if chat else "cmpl")
    model = services.engine.loaded.model_id
    run = _Run(services, engine_request, report, started)
    if body.stream:
        return StreamingResponse(_sse(run, events, id_, model, chat, body.include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    async for event in events:
        run.observe(event)
    make = protocol.chat_completion if chat else protocol.text_completion
    return JSONResponse(make(id_, model, run.finished.text, run.finished.finish_reason, run.usage(), run.timings()))


async def _sse(run: "_Run", events: AsyncIterator, id_: str, model: str, chat: bool,
               include_usage: bool) -> AsyncIterator[str]:
    try:
        if chat:
            yield _data(protocol.chat_chunk(id_, model, {"role": "assistant", "content": ""}))
        async for event in events:
            run.observe(event)
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
