"""POST /v1/responses: OpenAI's Responses API, stateless subset, on the segment tree.

Errors keep OpenAI's shape (this is an OpenAI API). Usage has the Responses fields
(`input_tokens_details.cached_tokens`) plus our per-segment receipts; `prompt_cache_key` and
`prompt_cache_retention` behave as on chat completions (server/prompt_cache.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from segcache.engine.request import EngineRequest, Finished
from segcache.server import protocol
from segcache.server.errors import ApiError
from segcache.server.limits import check_prompt_limits
from segcache.server.generation import Generation, open_generation, sse_data
from segcache.server.prompt_cache import CacheHint, cache_hint
from segcache.server.responses_protocol import ResponsesRequest
from segcache.server.services import services_of

router = APIRouter()


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    body.refuse_unsupported()
    hint = cache_hint(body.prompt_cache_key, body.prompt_cache_retention)
    prompt = body.prompt()
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", segments=prompt.segments, messages=prompt.messages,
        sampling=body.sampling(services.config.max_tokens_default), ttl_seconds=hint.ttl_seconds)
    check_prompt_limits(services.config, engine_request.segments, [str(m["content"]) for m in engine_request.messages],
                        len(engine_request.messages), engine_request.sampling.stop)
    generation = await open_generation(services, engine_request, {"endpoint": "responses", **hint.trace_fields()})
    reply = _Reply(body, hint, generation, services.engine.loaded.model_id)
    if body.stream:
        return StreamingResponse(_events(reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **hint.headers()})
    finished = await generation.finish(request)
    if finished is None:
        return JSONResponse({}, status_code=499)   # nobody is listening; the engine has stopped
    return JSONResponse(reply.response(finished), headers=hint.headers())


class _Reply:
    """One response object, in progress or finished, and its single output message."""

    def __init__(self, body: ResponsesRequest, hint: CacheHint, generation: Generation, model: str):
        self.body, self.hint, self.generation, self.model = body, hint, generation, model
        self.id = protocol.new_id("resp").replace("-", "_")
        self.item_id = protocol.new_id("msg").replace("-", "_")
        self.created_at = int(time.time())

    def response(self, finished: Finished | None) -> dict:
        incomplete = finished is not None and finished.finish_reason == "length"
        status = "in_progress" if finished is None else "incomplete" if incomplete else "completed"
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": [self.item(finished.text, "completed")] if finished else [],
            "usage": self.usage(finished) if finished else None, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.body.instructions, "max_output_tokens": self.body.max_output_tokens,
            "temperature": self.body.temperature, "top_p": self.body.top_p, "parallel_tool_calls": False,
            "tool_choice": "none", "tools": [], "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "previous_response_id": None, "store": False,
            "metadata": (self.body.model_extra or {}).get("metadata") or {},
            "prompt_cache_key": self.hint.key, "prompt_cache_retention": self.hint.retention,
            "timings": self.generation.run.timings()}

    def item(self, text: str, status: str) -> dict:
        content = [self.part(text)] if status == "completed" else []
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    @staticmethod
    def part(text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def usage(self, finished: Finished) -> dict:
        report = self.generation.report
        return {"input_tokens": report.prompt_tokens, "input_tokens_details": {"cached_tokens": report.cached_tokens},
                "output_tokens": finished.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": report.prompt_tokens + finished.completion_tokens,
                "segments": [protocol.receipt_json(r) for r in report.receipts]}


async def _events(reply: _Reply) -> AsyncIterator[str]:
    """The Responses event sequence for one text message; `error` if the engine fails midway."""
    sequence = iter(range(1 << 62))

    def event(type_: str, **fields) -> str:
        return sse_data({"type": type_, "sequence_number": next(sequence), **fields}, type_)

    where = {"item_id": reply.item_id, "output_index": 0}
    try:
        yield event("response.created", response=reply.response(None))
        yield event("response.in_progress", response=reply.response(None))
        yield event("response.output_item.added", output_index=0, item=reply.item("", "in_progress"))
        yield event("response.content_part.added", **where, content_index=0, part=reply.part(""))
        async for text in reply.generation.deltas():
            yield event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])
        finished = reply.generation.run.finished
        yield event("response.output_text.done", **where, content_index=0, text=finished.text, logprobs=[])
        yield event("response.content_part.done", **where, content_index=0, part=reply.part(finished.text))
        yield event("response.output_item.done", output_index=0, item=reply.item(finished.text, "completed"))
        final = reply.response(finished)
        yield event("response.incomplete" if final["status"] == "incomplete" else "response.completed", response=final)
    except Exception as exc:  # headers are gone: report in-band
        error = exc if isinstance(exc, ApiError) else ApiError(500, f"internal error: {exc}", "internal_error")
        yield event("error", code=error.code, message=error.message, param=error.param)
    finally:
        await reply.generation.close()
