"""A client that leaves a stream, on each streaming API, stops the decode."""

import time

import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26), load("tiny", "float32"))


STREAMS = {
    "chat": ("/v1/chat/completions", {"max_tokens": 3000, "messages": [{"role": "user", "content": "hi"}]}),
    "messages": ("/v1/messages", {"max_tokens": 3000, "messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"max_output_tokens": 3000, "input": "hi"}),
}


def decoded_until_idle(server, before: int, timeout: float = 120) -> int:
    """Decode tokens run since `before`, once the engine has stopped decoding and nothing waits."""
    runner, deadline, last = server.engine.executor.runner, time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        if runner.num_decode_tokens == last and server.engine.queue_depth == 0:
            return last - before
        last = runner.num_decode_tokens
        time.sleep(0.5)
    raise AssertionError("the engine kept decoding")


@pytest.mark.parametrize("api", STREAMS)
def test_a_client_that_leaves_a_stream_stops_the_decode(server, api):
    """The runner counts every decode token it runs: a left stream must stop far short of max_tokens."""
    before = server.engine.executor.runner.num_decode_tokens
    path, body = STREAMS[api]
    with httpx.stream("POST", server.url + path, json={"model": MODEL, "stream": True, "temperature": 0, **body}) as reply:
        for _ in zip(range(5), reply.iter_lines()):
            pass
    assert decoded_until_idle(server, before) < 3000 - 1   # 0 when it left before the first decode step
