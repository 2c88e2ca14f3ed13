"""Tool use on /v1/messages through a real server and the official anthropic SDK.

The default model (SmolLM2-135M), greedy: a forced call (`any`, `tool`) must validate against the
tool's input_schema because the chat path's grammar constrains it.
"""

import httpx
import jsonschema
import pytest

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
TOOLS = [{"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER},
         {"name": "get_time", "description": "Current time in a timezone", "input_schema": TIME}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}


def create(client, max_tokens=60, **fields):
    return client.messages.create(model=MODEL, max_tokens=max_tokens, extra_body=GREEDY, tools=TOOLS, **fields)


def only_call(message):
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1, message.content
    return calls[0]


def test_any_returns_a_tool_use_block_whose_input_validates(anthropic_client):
    reply = create(anthropic_client, messages=ASK, tool_choice={"type": "any"})
    assert reply.stop_reason == "tool_use"
    call = only_call(reply)
    assert call.id.startswith("toolu_") and call.name in ("get_weather", "get_time")
    jsonschema.validate(call.input, WEATHER if call.name == "get_weather" else TIME)


def test_a_named_tool_is_the_one_called(anthropic_client):
    reply = create(anthropic_client, messages=ASK, tool_choice={"type": "tool", "name": "get_time"})
    call = only_call(reply)
    assert call.name == "get_time" and reply.stop_reason == "tool_use"
    jsonschema.validate(call.input, TIME)


def test_a_streamed_call_is_content_block_start_and_input_json_deltas(anthropic_client):
    with anthropic_client.messages.stream(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=TOOLS, messages=ASK,
                                          tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert starts == ["tool_use"] and set(deltas) == {"input_json_delta"}
    call = only_call(final)
    assert final.stop_reason == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER)
    whole = create(anthropic_client, messages=ASK, tool_choice={"type": "tool", "name": "get_weather"})
    assert only_call(whole).input == call.input


def test_a_tool_result_round_trip_reads_the_first_turn_from_cache(anthropic_client):
    cached_tools = TOOLS[:-1] + [{**TOOLS[-1], "cache_control": {"type": "ephemeral"}}]
    ask = [{"role": "user", "content": "Is it raining in Lisbon right now?"}]
    first = anthropic_client.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=cached_tools,
                                             messages=ask, tool_choice={"type": "any"})
    call = only_call(first)
    assert first.usage.cache_read_input_tokens + first.usage.cache_creation_input_tokens > 0   # the tools segment
    history = ask + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                   "content": '{"celsius": 18, "sky": "clear"}'}]}]
    second = anthropic_client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, tools=cached_tools,
                                              messages=history, tool_choice={"type": "auto"})
    prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens + first.usage.cache_creation_input_tokens
    # All of the first prompt but its generation prompt (always computed) is read back from the tree.
    assert prompt > second.usage.cache_read_input_tokens > first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens > prompt - 8
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_none_answers_in_text_and_auto_reads_calls(anthropic_client):
    none = create(anthropic_client, messages=ASK, max_tokens=12, tool_choice={"type": "none"})
    assert [b.type for b in none.content] == ["text"] and none.stop_reason in ("end_turn", "max_tokens")
    auto = create(anthropic_client, messages=ASK, max_tokens=60, tool_choice={"type": "auto"})
    assert auto.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert (auto.stop_reason == "tool_use") == any(b.type == "tool_use" for b in auto.content)


def test_tool_history_renders_as_the_chat_path_does(anthropic_client, api_server):
    """A tool_use/tool_result exchange and the same chat messages make the same prompt: no new node."""
    args = {"city": "Paris", "unit": "celsius"}
    history = ASK + [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                        "input": args}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18"}]}]
    reply = create(anthropic_client, messages=history, max_tokens=3, tool_choice={"type": "none"})
    nodes = httpx.get(api_server.url + "/v1/cache").json()["nodes"]
    chat = httpx.post(api_server.url + "/v1/chat/completions", json={
        "model": MODEL, "max_tokens": 3, "temperature": 0, "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                    "parameters": t["input_schema"]}} for t in TOOLS],
        "messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18"}]}).json()
    after = httpx.get(api_server.url + "/v1/cache").json()["nodes"]
    assert [(n["key"], n["tokens"]) for n in after] == [(n["key"], n["tokens"]) for n in nodes]
    assert chat["choices"][0]["message"]["content"] == reply.content[0].text


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0]"),
])
def test_bad_tool_fields_are_specific_400s(api_server, fields, param):
    body = {"model": MODEL, "max_tokens": 4, "messages": ASK, "tools": TOOLS, **fields}
    response = httpx.post(api_server.url + "/v1/messages", json=body, headers={"x-api-key": "unused"})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error" and param.split(".")[0].split("[")[0] in response.json()["error"]["message"]
