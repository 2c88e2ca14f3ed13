"""Function tools on /v1/responses through a real server and the official openai SDK.

The default model (SmolLM2-135M), greedy: a forced call must validate against the function's
parameters because the chat path's grammar constrains it.
"""

import json

import httpx
import jsonschema
import openai
import pytest

MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER},
         {"type": "function", "name": "get_time", "description": "Current time in a timezone", "parameters": TIME}]
ASK = "What is the weather in Paris?"


def create(client, input_=ASK, max_output_tokens=60, **fields):
    return client.responses.create(model=MODEL, input=input_, tools=TOOLS, max_output_tokens=max_output_tokens,
                                   temperature=0, **fields)


def only_call(response):
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1, response.output
    return calls[0]


def test_required_returns_a_function_call_item_whose_arguments_validate(openai_client):
    reply = create(openai_client, tool_choice="required")
    call = only_call(reply)
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER if call.name == "get_weather" else TIME)
    assert reply.status == "completed" and [t.name for t in reply.tools] == ["get_weather", "get_time"]


def test_a_named_function_is_the_one_called(openai_client):
    call = only_call(create(openai_client, tool_choice={"type": "function", "name": "get_time"}))
    assert call.name == "get_time"
    jsonschema.validate(json.loads(call.arguments), TIME)


def test_a_streamed_call_is_output_item_and_arguments_events(openai_client):
    stream = create(openai_client, tool_choice={"type": "function", "name": "get_weather"}, stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.output_text.delta" not in types
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert streamed == done.arguments
    final = events[-1].response
    call = only_call(final)
    assert call.arguments == streamed and call.call_id == added.item.call_id and call.id == added.item.id
    jsonschema.validate(json.loads(streamed), WEATHER)
    whole = only_call(create(openai_client, tool_choice={"type": "function", "name": "get_weather"}))
    assert whole.arguments == streamed


def test_a_function_call_output_round_trip_reads_the_first_turn_from_cache(openai_client):
    ask = "Is it raining in Lisbon right now?"
    first = create(openai_client, ask, tool_choice="required")
    call = only_call(first)
    history = [{"role": "user", "content": ask},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 18, "sky": "clear"}'}]
    second = create(openai_client, history, max_output_tokens=12, tool_choice="auto")
    read = second.usage.input_tokens_details.cached_tokens
    # All of the first prompt but its generation prompt (always computed) is read back from the tree.
    assert first.usage.input_tokens > read > first.usage.input_tokens - 8
    assert second.status in ("completed", "incomplete")


def test_function_history_renders_as_the_chat_path_does(openai_client, api_server):
    """A function_call/function_call_output exchange and the same chat messages make the same prompt."""
    history = [{"role": "user", "content": ASK},
               {"type": "function_call", "call_id": "c1", "name": "get_weather",
                "arguments": '{"city": "Paris", "unit": "celsius"}'},
               {"type": "function_call_output", "call_id": "c1", "output": "18"}]
    reply = create(openai_client, history, max_output_tokens=3, tool_choice="none")
    nodes = httpx.get(api_server.url + "/v1/cache").json()["nodes"]
    chat = httpx.post(api_server.url + "/v1/chat/completions", json={
        "model": MODEL, "max_tokens": 3, "temperature": 0, "tool_choice": "none",
        "tools": [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
                  for t in TOOLS],
        "messages": [{"role": "user", "content": ASK},
                     {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                         "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "18"}]}).json()
    after = httpx.get(api_server.url + "/v1/cache").json()["nodes"]
    assert [(n["key"], n["tokens"]) for n in after] == [(n["key"], n["tokens"]) for n in nodes]
    assert chat["choices"][0]["message"]["content"] == reply.output_text


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
    ({"input": [{"type": "function_call", "call_id": "c"}]}, "input[0].name"),
])
def test_bad_tool_fields_are_specific_400s(openai_client, api_server, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(**{"model": MODEL, "input": ASK, "tools": TOOLS, "max_output_tokens": 2, **fields})
    assert caught.value.body["param"] == param
