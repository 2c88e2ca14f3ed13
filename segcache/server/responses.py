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
from segcache.engine.tools import ToolCall
from segcache.server.responses_protocol import ResponsesRequest
from segcache.server.responses_tools import CallEvents, FunctionTools, call_item, new_item_id
from segcache.server.services import services_of

router = APIRouter()


@router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request):
    services = services_of(request)
    tenant = services.tenant(request)
    services.check_model(body.model)
    body.refuse_unsupported()
    hint = cache_hint(body.prompt_cache_key, body.prompt_cache_retention)
    tools = body.function_tools()
    prompt = body.prompt(tools)
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", segments=prompt.segments, messages=prompt.messages,
        sampling=body.sampling(services.config.max_tokens_default), ttl_seconds=hint.ttl_seconds,
        grammar=tools.grammar())
    check_prompt_limits(services.config, engine_request.segments, [str(m["content"]) for m in engine_request.messages],
                        len(engine_request.messages), engine_request.sampling.stop)
    generation = await open_generation(services, engine_request, {"endpoint": "responses", **hint.trace_fields()})
    reply = _Reply(body, hint, generation, services.engine.loaded.model_id, tools)
    if body.stream:
        return StreamingResponse(_events(reply), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **hint.headers()})
    finished = await generation.finish(request)
    if finished is None:
        return JSONResponse({}, status_code=499)   # nobody is listening; the engine has stopped
    reply.settle(*tools.split(finished.text))
    return JSONResponse(reply.response(finished), headers=hint.headers())


class _Reply:
    """One response object, in progress or finished: its output message and function calls."""

    def __init__(self, body: ResponsesRequest, hint: CacheHint, generation: Generation, model: str,
                 tools: FunctionTools):
        self.body, self.hint, self.generation, self.model, self.tools = body, hint, generation, model, tools
        self.id = new_item_id("resp")
        self.item_id = new_item_id("msg")
        self.created_at = int(time.time())
        self.content, self.calls = "", []

    def settle(self, content: str, calls: list[ToolCall]) -> None:
        """The reply's text and calls, once: the call ids streamed are the ones the response lists."""
        self.content, self.calls = content, [(call, new_item_id("fc")) for call in calls]

    def output(self) -> list[dict]:
        message = [self.item(self.content, "completed")] if self.content or not self.calls else []
        return message + [call_item(call, item_id) for call, item_id in self.calls]

    def response(self, finished: Finished | None) -> dict:
        incomplete = finished is not None and finished.finish_reason == "length"
        status = "in_progress" if finished is None else "incomplete" if incomplete else "completed"
        tools, tool_choice = self.tools.echo()
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": self.output() if finished else [],
            "usage": self.usage(finished) if finished else None, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.body.instructions, "max_output_tokens": self.body.max_output_tokens,
            "temperature": self.body.temperature, "top_p": self.body.top_p,
            "parallel_tool_calls": self.tools.max_calls is None, "tool_choice": tool_choice, "tools": tools,
            "text": {"format": {"type": "text"}}, "truncation": "disabled",
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


class _Events:
    """The Responses events of one reply: the text message (opened at once without tools, with its
    first text with them), then each function call; numbered by `sequence_number`."""

    def __init__(self, reply: _Reply):
        self.reply, self.calls = reply, CallEvents(reply.tools)
        self.sequence = iter(range(1 << 62))
        self.where = {"item_id": reply.item_id, "output_index": 0}
        self.opened, self.streamed = False, ""

    def event(self, type_: str, **fields) -> str:
        return sse_data({"type": type_, "sequence_number": next(self.sequence), **fields}, type_)

    def start(self) -> list[str]:
        return self._open() if self.calls.stream is None else []

    def text(self, delta: str) -> list[str]:
        return self._emit(self.calls.text(delta))

    def _emit(self, text: str) -> list[str]:
        self.streamed += text
        return [*self._open(), self.event("response.output_text.delta", **self.where, content_index=0, delta=text,
                                          logprobs=[])] if text else []

    def finish(self, finished: Finished) -> list[str]:
        reply = self.reply
        rest, found = self.calls.finish()
        lines = self._emit(rest)
        reply.settle(self.streamed, found) if reply.tools.parses_calls else reply.settle(finished.text, [])
        if self.opened or not found:
            lines += [*self._open(),
                      self.event("response.output_text.done", **self.where, content_index=0, text=reply.content,
                                 logprobs=[]),
                      self.event("response.content_part.done", **self.where, content_index=0,
                                 part=reply.part(reply.content)),
                      self.event("response.output_item.done", output_index=0,
                                 item=reply.item(reply.content, "completed"))]
        return lines + list(CallEvents.events(self.event, reply.calls, 1 if self.opened else 0))

    def _open(self) -> list[str]:
        if self.opened:
            return []
        self.opened = True
        return [self.event("response.output_item.added", output_index=0, item=self.reply.item("", "in_progress")),
                self.event("response.content_part.added", **self.where, content_index=0, part=self.reply.part(""))]


async def _events(reply: _Reply) -> AsyncIterator[str]:
    """The Responses event sequence (see _Events); `error` if the engine fails midway."""
    events = _Events(reply)
    try:
        yield events.event("response.created", response=reply.response(None))
        yield events.event("response.in_progress", response=reply.response(None))
        for line in events.start():
            yield line
        async for delta in reply.generation.deltas():
            for line in events.text(delta):
                yield line
        finished = reply.generation.run.finished
        for line in events.finish(finished):
            yield line
        final = reply.response(finished)
        yield events.event("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                           response=final)
    except Exception as exc:  # headers are gone: report in-band
        error = exc if isinstance(exc, ApiError) else ApiError(500, f"internal error: {exc}", "internal_error")
        yield events.event("error", code=error.code, message=error.message, param=error.param)
    finally:
        await reply.generation.close()
