"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API on the segment tree.

Anthropic clients (the anthropic SDK, Claude Code) work unchanged: `x-api-key` maps to a tenant as
a Bearer key does, `anthropic-version` is accepted, errors have Anthropic's shape
`{"type": "error", "error": {"type", "message"}}`, and usage has Anthropic's fields plus our
per-segment receipts. How `cache_control` becomes segments: see anthropic_protocol.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from segcache.engine.prompt import PromptError, build_chat_prompt
from segcache.engine.request import EngineRequest, Finished, PromptReport
from segcache.server import protocol
from segcache.server.anthropic_tools import BlockStream, ToolUse, content_blocks
from segcache.server.anthropic_protocol import AnthropicPrompt, Breakpoint, CountTokensRequest, MessagesRequest
from segcache.server.errors import ApiError, validation_error
from segcache.server.limits import check_prompt_limits
from segcache.server.generation import Generation, open_generation, sse_data
from segcache.server.services import Services, services_of

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                503: "overloaded_error", 529: "overloaded_error"}


def error_body(exc: ApiError) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(exc.status, "invalid_request_error"),
                                       "message": exc.message}}


def as_anthropic(exc: ApiError) -> ApiError:
    """Anthropic answers schema errors and over-long prompts with a 400; Claude Code looks for
    'prompt is too long' to decide to compact its history."""
    if exc.code == "context_length_exceeded":
        return ApiError(400, f"prompt is too long: {exc.message}", exc.code, exc.param)
    if exc.status == 422:
        return ApiError(400, exc.message, exc.code, exc.param)
    return exc


class AnthropicRoute(APIRoute):
    """Every error on these routes, schema errors included, in Anthropic's shape."""

    def get_route_handler(self) -> Callable:
        handle = super().get_route_handler()

        async def handle_in_anthropic_shape(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:  # noqa: BLE001 (every error becomes a response in this shape)
                error = as_anthropic(_api_error(exc))
                return JSONResponse(error_body(error), status_code=error.status)

        return handle_in_anthropic_shape


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptError):
        return ApiError.from_prompt_error(exc)
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, ValidationError):
        return ApiError(400, str(exc.errors()[0]["msg"]), "invalid_request")
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, str(exc.detail), "http_error")
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")


router = APIRouter(route_class=AnthropicRoute)


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    services = services_of(request)
    tenant, prompt = _checked_prompt(services, body, request)
    tool_use = body.tool_use()
    engine_request = EngineRequest(
        tenant=tenant, kind="chat", segments=prompt.segments, messages=prompt.messages,
        sampling=body.sampling(), ttl_seconds=prompt.ttl_seconds, grammar=tool_use.grammar())
    check_prompt_limits(services.config, engine_request.segments, [str(m["content"]) for m in engine_request.messages],
                        len(engine_request.messages), engine_request.sampling.stop)
    generation = await open_generation(services, engine_request, {"endpoint": "messages"})
    reply = _Reply(services, body, prompt, generation, tool_use)
    if body.stream:
        return StreamingResponse(_events(reply), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    finished = await generation.finish(request)
    if finished is None:
        return JSONResponse({}, status_code=499)   # nobody is listening; the engine has stopped
    return JSONResponse(reply.message(finished.text, finished))


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    services = services_of(request)
    _, prompt = _checked_prompt(services, body, request)
    built = build_chat_prompt(services.engine.loaded.tokenizer, [s.text for s in prompt.segments],
                              list(prompt.messages))
    return {"input_tokens": len(built.token_ids)}


def _checked_prompt(services: Services, body: CountTokensRequest, request: Request) -> tuple[str, AnthropicPrompt]:
    """The tenant and the mapped prompt, or the first error; nothing is stored yet."""
    tenant = _tenant(services, request)
    services.check_model(body.model)
    body.refuse_unsupported()
    return tenant, body.prompt()


def _tenant(services: Services, request: Request) -> str:
    """`x-api-key` is Anthropic's header for what OpenAI clients send as `Authorization: Bearer`."""
    key = request.headers.get("x-api-key")
    try:
        return services.keys.tenant_for(f"Bearer {key}" if key else request.headers.get("authorization"))
    except ApiError as exc:
        if exc.code == "missing_api_key":
            raise ApiError(401, "missing API key: send 'x-api-key: <key>'", exc.code) from None
        raise


# ---------------------------------------------------------------- replies


class _Reply:
    """One reply in Anthropic's terms: message JSON, usage fields, stop reason, stream events."""

    def __init__(self, services: Services, body: MessagesRequest, prompt: AnthropicPrompt, generation: Generation,
                 tool_use: ToolUse):
        self.services, self.body, self.prompt, self.generation = services, body, prompt, generation
        self.tool_use = tool_use
        self.id = protocol.new_id("msg").replace("-", "_")
        self.model = services.engine.loaded.model_id

    def message(self, text: str, finished: Finished | None) -> dict:
        content, calls = self.tool_use.split(text)
        stop_reason, stop_sequence = self.stop(finished, calls) if finished else (None, None)
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content_blocks(content, calls),
                "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                "usage": self.usage(finished.completion_tokens if finished else 0),
                "timings": self.generation.run.timings()}

    def usage(self, output_tokens: int) -> dict:
        report = self.generation.report
        created = _created_tokens(report, self.prompt.last_breakpoint) if self.services.config.cache_enabled else 0
        read = report.cached_tokens
        return {"input_tokens": report.prompt_tokens - read - created, "cache_creation_input_tokens": created,
                "cache_read_input_tokens": read, "output_tokens": output_tokens,
                "segments": [protocol.receipt_json(r) for r in report.receipts]}

    def stop(self, finished: Finished, calls: list) -> tuple[str, str | None]:
        if calls:
            return "tool_use", None
        if finished.finish_reason == "length":
            return "max_tokens", None
        loaded = self.services.engine.loaded
        if finished.token_ids and finished.token_ids[-1] in loaded.eos_token_ids:
            return "end_turn", None
        # The decoder cut the text where a stop sequence began: the rest of the decoded ids names it.
        tail = loaded.tokenizer.decode(list(finished.token_ids), skip_special_tokens=True)[len(finished.text):]
        matched = [s for s in self.body.stop_sequences if tail.startswith(s)]
        return ("stop_sequence", matched[0]) if matched else ("end_turn", None)


def _created_tokens(report: PromptReport, breakpoint: Breakpoint | None) -> int:
    """Tokens computed and written to the cache up to the last breakpoint (Anthropic's cache write)."""
    if breakpoint is None:
        return 0
    seen = -1
    for index, part in enumerate(report.parts):
        seen += part["kind"] == breakpoint.kind
        if seen == breakpoint.index:
            return sum(p["tokens"] - p["cached_tokens"] for p in report.parts[: index + 1])
    return sum(p["tokens"] - p["cached_tokens"] for p in report.parts[:-1])   # a template we could not split


async def _events(reply: _Reply) -> AsyncIterator[str]:
    """message_start, content_block_start, ping, content_block_delta..., content_block_stop (then
    one start/input_json_delta/stop per tool_use block), message_delta (stop reason, usage),
    message_stop; an `error` event if the engine fails midway."""
    start = reply.message("", None)
    start["usage"]["output_tokens"] = 0
    try:
        yield sse_data({"type": "message_start", "message": start}, "message_start")
        blocks = BlockStream(reply.tool_use)
        for event in blocks.start():
            yield event
        yield sse_data({"type": "ping"}, "ping")
        async for text in reply.generation.deltas():
            for event in blocks.text(text):
                yield event
        for event in blocks.finish():
            yield event
        finished = reply.generation.run.finished
        stop_reason, stop_sequence = reply.stop(finished, blocks.calls)
        yield sse_data({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                        "usage": reply.usage(finished.completion_tokens)}, "message_delta")
        yield sse_data({"type": "message_stop"}, "message_stop")
    except Exception as exc:  # headers are gone: report in-band, as Anthropic does
        yield sse_data(error_body(as_anthropic(_api_error(exc))), "error")
    finally:
        await reply.generation.close()
