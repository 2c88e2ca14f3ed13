"""Agents act through the real openai SDK and LangChain: tool calls, structured outputs, logprobs, sampling.

The default model (SmolLM2-135M) where behaviour matters: a forced call or schema must validate even
though so small a model would rarely write one unaided.
"""

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from segcache.config import ServeConfig

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone",
                                           "parameters": TIME}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Weather(BaseModel):
    city: str = Field(max_length=40)
    celsius: int = Field(ge=-60, le=60)


@pytest.fixture(scope="module")
def server(app_server_for_session, load):
    """One real server on loopback for the module, in float32 (the model is shared, so is the grammar index)."""
    config = ServeConfig(model="default", dtype="float32", cache_bytes=1 << 30)
    return app_server_for_session(config, load("default", "float32")).base_url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def test_required_tool_choice_returns_a_call_whose_arguments_validate(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=60, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_a_forced_call_streams_as_delta_tool_calls(client, model):
    stream = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=60, temperature=0, stream=True)
    calls, reasons, content = {}, [], ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": part.id, "name": "", "arguments": ""})
            call["name"] += part.function.name or ""
            call["arguments"] += part.function.arguments or ""
        reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "tool_calls" and content == ""
    (call,) = calls.values()
    assert call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), schema_of(call["name"]))


def test_a_named_tool_choice_calls_that_function(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, max_tokens=60, temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME)


def test_tool_choice_none_answers_in_text(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="none",
                                           max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_tool_result_round_trip_reuses_the_cached_conversation(client, model):
    """Call, feed the result back (auto: the model may answer), and find the first request's prompt in the cache."""
    first = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=60, temperature=0)
    (call,) = first.choices[0].message.tool_calls
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 18, "sky": "clear"}'}]
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="auto",
                                            max_tokens=16, temperature=0)
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 4       # all of it but the old generation prompt
    assert [s["status"] for s in second.usage.model_extra["segments"]] == ["hit"]   # the tools block


def test_parse_fills_a_pydantic_model_from_a_json_schema(client, model):
    reply = client.chat.completions.parse(model=model, response_format=Weather, max_tokens=40, temperature=0,
                                          messages=[{"role": "user", "content": "Weather in Rome today?"}])
    assert isinstance(reply.choices[0].message.parsed, Weather)


def test_json_object_replies_with_an_object(client, model):
    reply = client.chat.completions.create(model=model, response_format={"type": "json_object"}, max_tokens=40,
                                           temperature=0, messages=[{"role": "user", "content": "List two fruits."}])
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.startswith("{")


def test_chat_logprobs_have_openai_shapes_streamed_and_not(client, model):
    args = dict(model=model, messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**args).choices[0]
    content = whole.logprobs.content
    assert len(content) == 6 and "".join(t.token for t in content) == whole.message.content
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob >= entry.logprob
        assert entry.top_logprobs[0].token == entry.token          # greedy: the best is the one chosen
    streamed = [t for chunk in client.chat.completions.create(**args, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for t in chunk.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_completion_logprobs_and_echo(client, model):
    reply = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                      temperature=0, logprobs=2).choices[0]
    assert len(reply.logprobs.tokens) == len(reply.logprobs.token_logprobs) == 4
    assert "".join(reply.logprobs.tokens) == reply.text
    assert all(len(top) == 2 for top in reply.logprobs.top_logprobs)
    assert reply.logprobs.text_offset[0] == 0
    echoed = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                       temperature=0, echo=True).choices[0]
    assert echoed.text == "The capital of France is" + reply.text


def test_logit_bias_moves_the_choice(client, model, load):
    args = dict(model=model, messages=ASK, max_tokens=3, temperature=0, logprobs=True)
    plain = client.chat.completions.create(**args).choices[0]
    first = plain.logprobs.content[0].token
    tokenizer = load("default", "float32").tokenizer
    (first_id,) = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(first))
    banned = client.chat.completions.create(**args, logit_bias={str(first_id): -100}).choices[0]
    assert banned.logprobs.content[0].token != first
    forced = client.chat.completions.create(**args, logit_bias={"28": 100}).choices[0]
    assert forced.message.content == forced.logprobs.content[0].token * 3


def test_frequency_penalty_changes_a_repetitive_reply(client, model):
    args = dict(model=model, max_tokens=24, temperature=0,
                messages=[{"role": "user", "content": "Say the word cat ten times."}])
    plain = client.chat.completions.create(**args).choices[0].message.content
    penalised = client.chat.completions.create(**args, frequency_penalty=2.0, presence_penalty=1.0)
    assert penalised.choices[0].message.content != plain


UNSUPPORTED_CHAT = [
    ("functions", {"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
    ("function_call", {"function_call": "auto"}),
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("prediction", {"prediction": {"type": "content", "content": "x"}}),
    ("web_search_options", {"web_search_options": {}}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("verbosity", {"verbosity": "low"}),
    ("top_k", {"top_k": 4}),
    ("min_p", {"min_p": 0.1}),
    ("repetition_penalty", {"repetition_penalty": 1.2}),
    ("n", {"n": 2}),
    ("messages.0.content.0.type", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
]


@pytest.mark.parametrize("param,fields", UNSUPPORTED_CHAT, ids=[p for p, _ in UNSUPPORTED_CHAT])
def test_each_unsupported_chat_field_is_a_400_naming_it(client, model, param, fields):
    body = {"messages": ASK, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, max_tokens=2, messages=body.pop("messages"), extra_body=body)
    error = caught.value.body
    assert (error["code"], error["param"]) == ("unsupported_parameter", param) and error["message"]


@pytest.mark.parametrize("param,fields", [("suffix", {"suffix": "end"}), ("best_of", {"best_of": 3}),
                                          ("echo", {"echo": True, "logprobs": 1})])
def test_each_unsupported_completion_field_is_a_400_naming_it(client, model, param, fields):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, prompt="hi", max_tokens=2, extra_body=fields)
    assert (caught.value.body["code"], caught.value.body["param"]) == ("unsupported_parameter", param)


def test_an_image_part_says_what_is_supported(client, model):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}])
    assert "'image_url' are not supported" in caught.value.body["message"]
    assert 'type "text"' in caught.value.body["message"]


def test_text_parts_are_joined(client, model):
    args = dict(model=model, max_tokens=4, temperature=0)
    parts = client.chat.completions.create(**args, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is the weather "}, {"type": "text", "text": "in Paris?"}]}])
    plain = client.chat.completions.create(**args, messages=ASK)
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_harmless_metadata_is_accepted(client, model):
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=2, user="u-1", store=False,
                                           metadata={"run": "1"}, service_tier="auto", parallel_tool_calls=False,
                                           tools=TOOLS)
    assert reply.choices[0].message.content is not None


# ---------------------------------------------------------------- LangChain


def test_langchain_bind_tools_returns_a_tool_call(server, model):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server, api_key="unused", model=model, temperature=0, max_tokens=60, max_retries=0)
    message = llm.bind_tools(TOOLS, tool_choice="get_weather").invoke("What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER)


def test_langchain_structured_output_returns_the_model(server, model):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server, api_key="unused", model=model, temperature=0, max_tokens=40, max_retries=0)
    assert isinstance(llm.with_structured_output(Weather).invoke("Weather in Rome today?"), Weather)

