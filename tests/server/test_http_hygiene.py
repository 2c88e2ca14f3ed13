"""HTTP as clients and proxies expect it: Allow on 405, an OpenAPI document that tells the truth, a
bounded graceful shutdown that ends a running stream in-band."""

import json
import signal
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
