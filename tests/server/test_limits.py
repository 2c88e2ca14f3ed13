"""Work limits in front of the engine: each refusal is specific, happens before tokenizing, and changes nothing."""

import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
LIMITS = dict(max_body_bytes=20_000, max_prompt_chars=5_000, max_messages=10, max_stop_bytes=16)


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 24, **LIMITS), load("tiny", "float32"))


def chat_body(**change):
    return {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], **change}


def state(server):
    engine = server.engine
    return (engine.tree.used_bytes, engine.tree.num_nodes, len(engine.segment_store),
            engine.executor.runner.num_prefill_tokens, httpx.get(server.base_url + "/segments").json()["data"])


def refused(reply, status, code):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("change,status,code", [
    ({"messages": [{"role": "user", "content": "x " * 3_000}]}, 413, "prompt_too_large"),
    ({"segments": [{"content": "y" * 4_000}], "messages": [{"role": "user", "content": "z" * 1_500}]},
     413, "prompt_too_large"),
    ({"messages": [{"role": "user", "content": "hi"}] * 11}, 400, "too_many_messages"),
    ({"stop": ["abcde", "fghij", "klmno", "pqrst"]}, 400, "stop_too_long"),
], ids=["long-message", "segments-count-too", "messages", "stop"])
def test_over_a_limit_is_refused_before_tokenizing(server, change, status, code):
    before = state(server)
    refused(httpx.post(server.base_url + "/chat/completions", json=chat_body(**change)), status, code)
    assert state(server) == before


def test_a_body_over_the_limit_is_refused_before_parsing(server):
    before = state(server)
    big = chat_body(messages=[{"role": "user", "content": "w" * 30_000}])
    refused(httpx.post(server.base_url + "/chat/completions", json=big), 413, "request_too_large")
    chunks = (b'{"model": "tiny-random-llama", "messages": [{"role": "user", "content": "' + b"v" * 9_000
              for _ in range(3))   # no Content-Length: counted as it arrives
    refused(httpx.post(server.base_url + "/chat/completions", content=chunks,
                       headers={"content-type": "application/json"}), 413, "request_too_large")
    assert state(server) == before
    assert httpx.post(server.base_url + "/chat/completions", json=chat_body()).status_code == 200


def test_registry_and_warm_share_the_character_limit(server):
    before = state(server)
    refused(httpx.put(server.base_url + "/segments/big", json={"content": "q" * 6_000}), 413, "prompt_too_large")
    refused(httpx.post(server.base_url + "/cache/warm", json={"model": MODEL, "segments": [{"content": "q" * 6_000}]}),
            413, "prompt_too_large")
    assert state(server) == before
