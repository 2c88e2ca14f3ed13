"""HTTP as clients and proxies expect it: Allow on 405, an OpenAPI document that tells the truth, a
bounded graceful shutdown that ends a running stream in-band."""

import json
import signal
import socket
import time

import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 24), load("tiny", "float32"))


def test_405_says_which_methods_are_allowed(server):
    reply = httpx.get(server.base_url + "/chat/completions")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"
    assert reply.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_the_error_shape_the_server_sends(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema) and '"detail"' not in json.dumps(schema)
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "422"} <= set(chat)
    assert chat["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "text/event-stream" in chat["200"]["content"]
    # And the server does send that shape for a 422.
    reply = httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "messages": "nope"})
    assert reply.status_code == 422
    assert set(reply.json()["error"]) == set(schema["components"]["schemas"]["Error"]["properties"]["error"]["required"])


def test_sigterm_ends_a_running_stream_after_the_grace_period(serve):
    running = serve("--model", "tiny", "--dtype", "float32", "--shutdown-grace", "1")
    body = {"model": MODEL, "max_tokens": 4000, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Count to a thousand."}]}
    events = []
    with httpx.stream("POST", running.base_url + "/chat/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        events.append(next(line for line in lines if line.startswith("data: ")))
        signalled = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        events += [line for line in lines if line.startswith("data: ")]
    ended = time.monotonic() - signalled
    assert json.loads(events[-1][len("data: "):])["error"]["code"] == "server_shutting_down"
    assert 1 <= ended < 15   # the grace period, not the 4,000 tokens (about 20 s on this model)
    assert running.process.wait(timeout=20) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal it handled


def _raw(url: str, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send `data` (it need not be a whole request) on a fresh socket; everything until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_get_an_openai_error_and_slow_headers_are_cut_off(serve):
    running = serve("--model", "tiny", "--header-timeout", "1")
    # A header past h11's 16 KiB limit for an unfinished request head: the server answers before the rest.
    head, _, body = _raw(running.url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    started = time.monotonic()
    assert _raw(running.url, b"GET /health HTTP/1.1\r\nHost: x\r\n") == b""   # headers never finished
    assert time.monotonic() - started < 5
    assert httpx.get(running.url + "/health").status_code == 200
