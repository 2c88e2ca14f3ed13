"""A non-streaming client that goes away stops the engine within a decode step, as a stream does."""

import time

import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
BODY = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": "Count to a thousand."}]}


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 24), load("tiny", "float32"))


def wait_idle(server, timeout=60):
    deadline = time.monotonic() + timeout
    runner = server.engine.executor.runner
    last = -1
    while time.monotonic() < deadline:
        if runner.num_decode_tokens == last and server.engine.queue_depth == 0:
            return last
        last = runner.num_decode_tokens
        time.sleep(0.5)
    raise AssertionError("the engine kept decoding")


def test_a_dropped_non_streaming_request_stops_decoding(server):
    probe = httpx.post(server.base_url + "/chat/completions", json={**BODY, "max_tokens": 50}).json()
    assert probe["choices"][0]["finish_reason"] == "length"   # this prompt does not stop early on its own
    runner = server.engine.executor.runner
    before = runner.num_decode_tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/chat/completions", json={**BODY, "max_tokens": 4000}, timeout=1.0)
    decoded = wait_idle(server) - before
    assert 0 < decoded < 4000 - 1
    # The next request is served at once, not after the abandoned one's remaining tokens.
    reply = httpx.post(server.base_url + "/chat/completions", json={**BODY, "max_tokens": 2}, timeout=30)
    assert reply.status_code == 200
    server.engine.tree.check(within_budget=True)
