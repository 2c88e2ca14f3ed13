"""A client that leaves a stream, on each streaming API, stops the decode."""

import queue

import httpx
import pytest

from segcache.config import ServeConfig
from segcache.engine.request import Finished

MODEL = "tiny-random-llama"


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26), load("tiny", "float32"))


STREAMS = {
    "chat": ("/v1/chat/completions", {"max_tokens": 3000, "messages": [{"role": "user", "content": "hi"}]}),
    "messages": ("/v1/messages", {"max_tokens": 3000, "messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"max_output_tokens": 3000, "input": "hi"}),
}


@pytest.mark.parametrize("api", STREAMS)
def test_a_client_that_leaves_a_stream_stops_the_decode(server, api):
    """The engine's own final event says how many tokens were decoded (a left stream sends it nowhere)."""
    finished, run = queue.Queue(), server.engine.executor.run

    def run_and_record(request, emit, cancelled, queued_at):
        run(request, lambda event: (emit(event), isinstance(event, Finished) and finished.put(event)), cancelled,
            queued_at)

    server.engine.executor.run = run_and_record
    path, body = STREAMS[api]
    with httpx.stream("POST", server.url + path, json={"model": MODEL, "stream": True, "temperature": 0, **body}) as reply:
        for _ in zip(range(5), reply.iter_lines()):
            pass
    assert finished.get(timeout=300).completion_tokens < 3000
