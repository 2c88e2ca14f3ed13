"""HTTP routes: parse, call the engine, map the result to JSON or SSE. No caching logic here."""

from __future__ import annotations

from dataclasses import asdict
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, SegmentInput
from segcache.server import protocol
from segcache.server.errors import ApiError
from segcache.server.generation import Generation, open_generation, sse_data
from segcache.server.limits import check_prompt_limits
from segcache.server.prompt_cache import CacheHint, cache_hint
from segcache.server.protocol import ChatCompletionRequest, CompletionRequest
from segcache.server.replies import ChatReply, CompletionReply
from segcache.server.segments import resolve_segments
from segcache.server.services import Services, services_of
from segcache.server.tool_protocol import parses_tool_calls, reply_grammar
from segcache.server.unsupported import check_chat, check_completion

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
        return {"status": "ok", "model": engine.loaded.model_id, "weights": engine.loaded.weights.format,
                "kernels": engine.loaded.weights.kernels, "kernel_paths": engine.kernel_paths,
                "cache_enabled": services.config.cache_enabled,
                "queue_depth": figures.queue_depth, "cache_bytes": figures.cache_bytes,
                "capacity_bytes": figures.capacity_bytes, "batching": batching,
                "prefill_span": {"tokens": engine.spans.span_tokens,
                                 "idle_tokens": engine.executor.config.idle_prefill_span_tokens,
                                 "reason": engine.spans.reason},
                "tenants": [asdict(t) for t in figures.tenants]}
    if not request.headers.get("authorization"):
        return {"status": "ok"}
    tenant = services.tenant(request)
    return {"status": "ok", "model": engine.loaded.model_id, "weights": engine.loaded.weights.format, "tenant": tenant, "queued": engine.queued(tenant),
            "batching": batching}


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
    check_chat(body, _vocab_size(services))
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    if (tools := body.tools_text()) is not None:
        segments += (SegmentInput(SegmentText(tools, "tools", segment_hash(tools))),)
    hint = cache_hint(body.prompt_cache_key, body.prompt_cache_retention)
    messages, sampling = body.plain_messages(), body.sampling(services.config.max_tokens_default)
    check_prompt_limits(services.config, segments, [m["content"] for m in messages], len(messages), sampling.stop)
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", messages=messages, segments=segments, sampling=sampling,
        reject_split=body.segment_boundary == "reject", ttl_seconds=hint.ttl_seconds,
        grammar=reply_grammar(body.tools, body.tool_choice, body.response_format))
    reply = ChatReply(protocol.new_id("chatcmpl"), services.engine.loaded.model_id,
                      parses_tool_calls(body.tools, body.tool_choice), body.logprobs,
                      parallel_tool_calls=body.parallel_tool_calls is not False)
    return await _generate(services, engine_request, body, reply, http=request, hint=hint)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    check_completion(body, _vocab_size(services))
    segments = resolve_segments(body.segments, tenant, services.engine.segment_store, services.registry)
    sampling = body.sampling(16)
    check_prompt_limits(services.config, segments, [body.prompt_text()], 0, sampling.stop)
    engine_request = EngineRequest(
        tenant=tenant, kind="completion", prompt=body.prompt_text(), segments=segments,
        sampling=sampling, reject_split=body.segment_boundary == "reject")
    reply = CompletionReply(protocol.new_id("cmpl"), services.engine.loaded.model_id, body.logprobs is not None,
                            body.prompt_text() if body.echo else None)
    return await _generate(services, engine_request, body, reply, http=request)


def _vocab_size(services: Services) -> int:
    return services.engine.loaded.model.config.vocab_size


# ---------------------------------------------------------------- generation


async def _generate(services: Services, engine_request: EngineRequest, body, reply: ChatReply | CompletionReply,
                    http: Request, hint: CacheHint = CacheHint()):
    generation = await open_generation(services, engine_request, hint.trace_fields())
    if body.stream:
        return StreamingResponse(_sse(generation, reply, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **hint.headers()})
    finished = await generation.finish(http)
    if finished is None:
        return JSONResponse({}, status_code=499)   # nobody is listening; the engine has stopped
    run = generation.run
    return JSONResponse(reply.body(finished, run.usage(), run.timings()), headers=hint.headers())


async def _sse(generation: Generation, reply: ChatReply | CompletionReply, include_usage: bool) -> AsyncIterator[str]:
    run, id_, model, chat = generation.run, reply.id, reply.model, isinstance(reply, ChatReply)
    try:
        for chunk in reply.first_chunks():
            yield sse_data(chunk)
        async for event in generation.text_events():
            for chunk in reply.chunks(event):
                yield sse_data(chunk)
        for chunk in reply.last_chunks(run.finished):
            yield sse_data(chunk)
        if include_usage:
            object_ = "chat.completion.chunk" if chat else "text_completion"
            chunk = protocol.usage_chunk(id_, model, object_, run.usage())
            chunk["timings"] = run.timings()
            yield sse_data(chunk)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # headers are gone: report in-band, as OpenAI does
        error = exc if isinstance(exc, ApiError) else ApiError(500, f"internal error: {exc}", "internal_error")
        yield sse_data(error.body())
    finally:
        await generation.close()

