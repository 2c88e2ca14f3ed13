"""uvicorn's h11 protocol with two additions: a header timeout, and malformed requests answered in
OpenAI's error shape.

Why: uvicorn closes idle keep-alive connections but waits forever for a request whose headers
trickle in (a slowloris holds a socket per few bytes a minute), and answers a request it cannot
parse (an over-long header, a broken request line) with plain text that OpenAI clients cannot read.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from segcache.server.errors import ApiError


class SegcacheH11(H11Protocol):
    header_timeout_s: float = 10.0   # set per server by protocol_class()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:   # still reading a request line and headers
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def send_400_response(self, msg: str) -> None:
        error = ApiError(400, "the server could not read this HTTP request (a header too long or malformed, or "
                         "a broken request line); send a well-formed request whose headers stay under 16 KiB",
                         "invalid_http_request")
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()

    def _arm_header_timer(self) -> None:
        # Armed once per request: trickling bytes do not extend it.
        if self._header_timer is None and self.conn.our_state is h11.IDLE:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[SegcacheH11]:
    return type("SegcacheH11", (SegcacheH11,), {"header_timeout_s": header_timeout_s})
