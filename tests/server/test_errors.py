"""Bad input gets a specific OpenAI-shaped error, and the cache stays whole."""

import httpx
import openai
import pytest

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
GOOD = "Shared rules for every agent."


@pytest.fixture
def server(app_server, load):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26), load("tiny", "float32"))


@pytest.fixture
def warmed(server):
    reply = httpx.post(server.base_url + "/chat/completions", json={
        "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "segments": [{"id": "rules", "content": GOOD}]})
    assert reply.status_code == 200
    return server


def snapshot(server):
    return httpx.get(server.base_url + "/cache").json()["nodes"]


BAD_REQUESTS = [
    ("segment_hash_mismatch", 400, {"segments": [{"id": "x", "hash": segment_hash("other"), "content": GOOD}]}),
    ("segment_not_found", 400, {"segments": [{"id": "x", "hash": segment_hash("never sent")}]}),
    ("segment_not_found", 400, {"segments": [{"name": "no-such-name"}]}),
    ("invalid_segment_hash", 400, {"segments": [{"hash": "md5:abc"}]}),
    ("invalid_request", 422, {"segments": [{"id": "only-an-id"}]}),
    ("invalid_request", 422, {"temperature": 7}),
    ("invalid_request", 422, {"messages": []}),
    ("unsupported_parameter", 400, {"n": 2}),
    ("unsupported_parameter", 400, {"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
    ("unsupported_parameter", 400, {"top_k": 5}),
    ("unsupported_parameter", 400, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
    ("invalid_logit_bias", 400, {"logit_bias": {"not-a-token": 5}}),
    ("invalid_parameter", 400, {"tools": [{"type": "function", "function": {"name": "f"}}],
                                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
    ("invalid_parameter", 400, {"tool_choice": "required"}),
    ("invalid_schema", 400, {"response_format": {"type": "json_schema",
                                                 "json_schema": {"name": "x", "schema": {"type": "strin"}}}}),
    ("model_not_found", 404, {"model": "gpt-9"}),
    ("invalid_max_tokens", 400, {"max_tokens": 10**9}),
    ("context_length_exceeded", 413, {"messages": [{"role": "user", "content": "word " * 5000}]}),
    ("segment_boundary_split", 400, {"segment_boundary": "reject",
                                     "segments": [{"id": "cut", "content": "Rules end with a space "},
                                                  {"id": "next", "content": "More rules."}]}),
]


@pytest.mark.parametrize("code,status,change", BAD_REQUESTS, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_REQUESTS)])
def test_bad_request_is_rejected_and_the_cache_is_unchanged(warmed, code, status, change):
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **change}
    before = snapshot(warmed)
    reply = httpx.post(warmed.base_url + "/chat/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert snapshot(warmed) == before
    warmed.engine.tree.check()


@pytest.mark.parametrize("body", [b'{"model": "x", "messages": [', b'{"model": "\xff\xfe"}'],
                         ids=["malformed-json", "not-utf8"])
def test_an_unreadable_body_is_a_400(warmed, body):
    before = snapshot(warmed)
    reply = httpx.post(warmed.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_json"
    assert snapshot(warmed) == before
    warmed.engine.tree.check()


def test_the_sdk_raises_typed_errors(warmed):
    client = openai.OpenAI(base_url=warmed.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"segments": [{"hash": segment_hash("unknown")}]})
    assert caught.value.code == "segment_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_unknown_route_is_openai_shaped(warmed):
    reply = httpx.get(warmed.base_url + "/nothing-here")
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"
