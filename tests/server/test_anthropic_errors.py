"""/v1/messages refuses what it cannot honour, in Anthropic's error shape, and changes no state;
x-api-key maps to a tenant exactly as a Bearer key does."""

import anthropic
import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
RULES = "Shared rules for every agent."
GOOD = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "system": [{"type": "text", "text": RULES, "cache_control": {"type": "ephemeral"}}]}


@pytest.fixture
def server(app_server, load, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("key-a1:team-a\nkey-a2:team-a\nkey-b:team-b\n")
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26, api_keys=str(keys)), load("tiny", "float32"))


def post(server, body, key="key-a1", path="/v1/messages", **kwargs):
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, **kwargs)


def nodes(server, key="key-a1"):
    return httpx.get(server.base_url + "/cache", headers={"Authorization": f"Bearer {key}"}).json()["nodes"]


TOOL = {"name": "read_file", "input_schema": {"type": "object"}}
BAD_REQUESTS = [
    (400, "server tools", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
    (400, "needs `tools`", {"tool_choice": {"type": "any"}}),
    (400, "belong in assistant messages", {"messages": [
        {"role": "user", "content": [{"type": "tool_use", "id": "t1", "name": "read_file", "input": {}}]}]}),
    (400, "'image' are not supported", {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
    (400, "max_tokens", {"max_tokens": None}),
    (400, "temperature", {"temperature": 1.5}),
    (400, "top_k", {"top_k": 5}),
    (400, "thinking", {"thinking": {"type": "enabled", "budget_tokens": 1024}}),
    (400, "output_config", {"output_config": {"effort": "low"}}),
    (400, "prefill", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}]}),
    (400, "'1h' must not come after", {"system": [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}),
    (400, "ttl", {"system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "2d"}}]}),
    (400, "prompt is too long", {"messages": [{"role": "user", "content": "word " * 5000}]}),
    (404, "is not served here", {"model": "claude-opus-9"}),
]


@pytest.mark.parametrize("status,words,change", BAD_REQUESTS, ids=[w for _, w, _ in BAD_REQUESTS])
def test_bad_request_gets_an_anthropic_error_and_changes_nothing(server, status, words, change):
    post(server, GOOD)
    before = nodes(server)
    reply = post(server, {k: v for k, v in {**GOOD, **change}.items() if v is not None})
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert words in body["error"]["message"]
    assert nodes(server) == before
    server.engine.tree.check()


def test_malformed_json_is_an_anthropic_400(server):
    reply = httpx.post(server.url + "/v1/messages", content=b"{not json", headers={"x-api-key": "key-a1"})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_sdk_raises_its_typed_errors(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="key-a1", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="not in `tools`"):
        client.messages.create(model=MODEL, max_tokens=2, tools=[TOOL], tool_choice={"type": "tool", "name": "nope"},
                               messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_x_api_key_maps_to_the_same_tenant_as_a_bearer_key(server):
    chat = httpx.post(server.base_url + "/chat/completions", headers={"Authorization": "Bearer key-a2"}, json={
        "model": MODEL, "max_tokens": 2, "segments": [{"content": RULES}],
        "messages": [{"role": "user", "content": "hello"}]}).json()
    shared = post(server, GOOD, key="key-a1").json()          # same tenant, other key: reads the cache
    other = post(server, GOOD, key="key-b").json()            # other tenant: computes everything
    assert chat["usage"]["cached_prefix_tokens"] == 0
    assert shared["usage"]["cache_read_input_tokens"] > 0
    assert other["usage"]["cache_read_input_tokens"] == 0
    assert post(server, GOOD, key=None).status_code == 401
    assert post(server, GOOD, key="nope").json()["error"]["type"] == "authentication_error"


def test_count_tokens_needs_no_max_tokens_and_changes_nothing(server):
    body = {k: v for k, v in GOOD.items() if k != "max_tokens"}
    counted = post(server, body, path="/v1/messages/count_tokens").json()
    assert nodes(server) == []
    replied = post(server, GOOD).json()["usage"]
    usage_total = replied["input_tokens"] + replied["cache_read_input_tokens"] + replied["cache_creation_input_tokens"]
    assert counted["input_tokens"] == usage_total
    with_tools = post(server, {**body, "tools": [TOOL]}, path="/v1/messages/count_tokens").json()
    assert with_tools["input_tokens"] > counted["input_tokens"]              # the tools block is in the prompt
    assert post(server, {**body, "tools": [{"name": "read_file"}]}, path="/v1/messages/count_tokens").status_code == 400
