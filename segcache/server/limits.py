"""Work limits in front of the engine: a request is refused before it costs more than its refusal.

The body limit runs before any parsing (an ASGI wrapper that counts bytes as they arrive); the
character, message and stop-string limits run on the parsed request before anything is tokenized.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from segcache.config import ServeConfig
from segcache.engine.request import SegmentInput
from segcache.server.errors import ApiError


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 request_too_large, whatever the app would say.

    A declared Content-Length over the limit is refused before a byte of the body is read; a chunked
    body is cut off at the limit (the app then sees a truncated body, and its answer is replaced).
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received, over = 0, False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request" and not over:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            if not over:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send) -> None:
        error = ApiError(413, f"the request body is larger than this server's limit of {self.max_bytes} bytes "
                         "(--max-body-bytes); send less, e.g. refer to segments by hash or name",
                         "request_too_large")
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def check_prompt_limits(config: ServeConfig, segments: Iterable[SegmentInput] = (), texts: Iterable[str] = (),
                        num_messages: int = 0, stop: Iterable[str] = ()) -> None:
    """Raise the ApiError for the first limit the request passes; cheap (no tokenizer)."""
    if num_messages > config.max_messages:
        raise ApiError(400, f"{num_messages} messages is more than this server takes ({config.max_messages}, "
                       "--max-messages); summarise or drop earlier turns", "too_many_messages", "messages")
    num_chars = sum(len(s.text.content) for s in segments) + sum(len(t) for t in texts)
    if num_chars > config.max_prompt_chars:
        raise ApiError(413, f"the prompt has {num_chars} characters, more than this server takes "
                       f"({config.max_prompt_chars}, --max-prompt-chars); shorten it", "prompt_too_large",
                       "messages")
    stop_bytes = sum(len(s.encode("utf-8")) for s in stop)
    if stop_bytes > config.max_stop_bytes:
        raise ApiError(400, f"the stop strings have {stop_bytes} bytes together, more than this server takes "
                       f"({config.max_stop_bytes}, --max-stop-bytes); use shorter stop strings", "stop_too_long",
                       "stop")
