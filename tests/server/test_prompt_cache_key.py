"""prompt_cache_key and prompt_cache_retention on chat completions and responses."""

import json
import time

import httpx
import openai
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
DAY = 24 * 3600


@pytest.fixture
def trace(tmp_path):
    return tmp_path / "trace.jsonl"


@pytest.fixture
def server(app_server, load, trace):
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26, trace_file=str(trace)), load("tiny", "float32"))


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def lifetimes(server) -> list[float | None]:
    now = time.time()
    return [None if n["expires_at"] is None else round((n["expires_at"] - now) / 3600)
            for n in httpx.get(server.base_url + "/cache").json()["nodes"]]


def chat(client, **extra):
    return client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}], **extra)


def test_chat_retention_24h_keeps_every_part_a_day_and_echoes_the_key(client, server, trace):
    raw = chat(client, prompt_cache_key="repo-42", prompt_cache_retention="24h",
               extra_body={"segments": [{"id": "short", "content": "Rules.", "ttl_seconds": 3600}]})
    assert raw.headers["x-segcache-cache-key"] == "repo-42"
    # head 24h, the segment its own 1h, the rest of the turn and the messages 24h
    assert lifetimes(server) == [24, 1] + [24] * (len(lifetimes(server)) - 2)
    record = json.loads(trace.read_text().splitlines()[-1])
    assert (record["endpoint"], record["prompt_cache_key"], record["prompt_cache_retention"]) == (
        "chat.completions", "repo-42", "24h")


def test_in_memory_retention_is_the_default_lifetime(client, server):
    raw = chat(client, prompt_cache_retention="in_memory")
    assert "x-segcache-cache-key" not in raw.headers
    assert set(lifetimes(server)) == {None}


def test_streamed_chat_echoes_the_key(server):
    with httpx.stream("POST", server.base_url + "/chat/completions", json={
            "model": MODEL, "max_tokens": 2, "stream": True, "prompt_cache_key": "k1",
            "messages": [{"role": "user", "content": "hi"}]}) as reply:
        assert reply.headers["x-segcache-cache-key"] == "k1"
        assert reply.read().endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("field,value,code", [("prompt_cache_retention", "forever", "unsupported_value"),
                                              ("prompt_cache_retention", "24H", "unsupported_value"),
                                              ("prompt_cache_key", "line\nbreak", "invalid_value")])
def test_bad_values_are_400_and_change_nothing(client, server, field, value, code):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, **{field: value})
    assert (caught.value.body["code"], caught.value.body["param"]) == (code, field)
    assert lifetimes(server) == []


def test_responses_retention_and_key(client, server, trace):
    raw = client.responses.with_raw_response.create(model=MODEL, input="hi", instructions="Be brief.",
                                                    max_output_tokens=2, prompt_cache_key="agent-3",
                                                    prompt_cache_retention="24h")
    assert raw.headers["x-segcache-cache-key"] == "agent-3"
    response = raw.parse()
    assert (response.prompt_cache_key, response.prompt_cache_retention) == ("agent-3", "24h")
    assert set(lifetimes(server)) == {24}
    record = json.loads(trace.read_text().splitlines()[-1])
    assert (record["endpoint"], record["prompt_cache_key"]) == ("responses", "agent-3")
    assert record["segments"][0]["id"] == "instructions"
