"""POST /v1/responses through a real server and the official openai SDK."""

import httpx
import openai
import pytest


MODEL = "smollm2-135m-instruct"
A = "Global rules: you are one agent of a team building a web shop. Be brief. Name the file you change."
B = "Backend skills: Python, FastAPI, PostgreSQL. You own api.py and models.py."
D = "Add an endpoint that lists orders."
E = "Make the checkout button accessible."
HEAD, END = "<|im_start|>system\n", "<|im_end|>\n"


def ask(client, question, **extra):
    return client.responses.create(model=MODEL, instructions=A, input=question, max_output_tokens=4, temperature=0,
                                   **extra)


def test_second_response_reports_the_cached_instructions(openai_client, tokenizer, api_server, count_tokens):
    first = ask(openai_client, D)
    assert first.usage.input_tokens_details.cached_tokens == 0
    second = ask(openai_client, E)
    assert second.usage.input_tokens_details.cached_tokens == count_tokens(HEAD + A + END)
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": A}, {"role": "user", "content": E}],
                                             tokenize=False, add_generation_prompt=True)
    assert second.usage.input_tokens == count_tokens(rendered)
    assert second.usage.total_tokens == second.usage.input_tokens + second.usage.output_tokens
    assert second.object == "response" and second.output[0].role == "assistant"
    assert second.status == ("incomplete" if second.usage.output_tokens == 4 else "completed")
    assert second.output_text == second.output[0].content[0].text
    api_server.engine.tree.check()


def test_streamed_response_has_the_event_sequence_and_the_same_text(openai_client, count_tokens):
    ask(openai_client, D)
    events = list(ask(openai_client, E, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.usage.input_tokens_details.cached_tokens == count_tokens(HEAD + A + END)
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == final.output_text == ask(openai_client, E).output_text


def test_input_items_and_chat_with_segments_hit_the_same_nodes(openai_client, api_server):
    """instructions and a leading developer item are segments, as in the equivalent chat request."""
    reply = openai_client.responses.create(model=MODEL, instructions=A, max_output_tokens=3, temperature=0, input=[
        {"role": "developer", "content": B},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": D}]}])
    nodes = httpx.get(api_server.base_url + "/cache").json()["nodes"]
    chat = openai.OpenAI(base_url=api_server.base_url, api_key="unused").chat.completions.create(
        model=MODEL, max_tokens=3, temperature=0, messages=[{"role": "user", "content": D}],
        extra_body={"segments": [{"content": A}, {"content": B}]})
    after = httpx.get(api_server.base_url + "/cache").json()["nodes"]
    assert [(n["key"], n["tokens"]) for n in after] == [(n["key"], n["tokens"]) for n in nodes]
    assert chat.usage.prompt_tokens == reply.usage.input_tokens
    assert chat.usage.prompt_tokens - chat.usage.prompt_tokens_details.cached_tokens == nodes[-1]["tokens"]
    assert chat.choices[0].message.content == reply.output_text


def test_a_conversation_in_items_is_cached_turn_by_turn(openai_client, tokenizer, count_tokens):
    first = ask(openai_client, D)
    history = [{"role": "user", "content": D}, {"role": "assistant", "content": [
        {"type": "output_text", "text": first.output_text, "annotations": []}]}, {"role": "user", "content": E}]
    second = ask(openai_client, history)
    done = tokenizer.apply_chat_template([{"role": "system", "content": A}, {"role": "user", "content": D}],
                                         tokenize=False)
    assert second.usage.input_tokens_details.cached_tokens == count_tokens(done)


REFUSED = [
    ("previous_response_id", {"previous_response_id": "resp_123"}, "stateless"),
    ("tools[0]", {"tools": [{"type": "web_search"}]}, "function tools only"),
    ("text", {"text": {"format": {"type": "json_object"}}}, "not supported"),
    ("top_logprobs", {"top_logprobs": 2}, "not supported"),
    ("input[0]", {"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "function tools only"),
    ("input[0].content[0]", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input_image"),
    ("prompt_cache_retention", {"prompt_cache_retention": "forever"}, "in_memory"),
]


@pytest.mark.parametrize("param,change,words", REFUSED, ids=[p for p, _, _ in REFUSED])
def test_fields_that_would_change_the_reply_are_refused(openai_client, api_server, param, change, words):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.responses.create(**{"model": MODEL, "input": "hi", "max_output_tokens": 2, **change})
    error = caught.value.body
    assert error["param"] == param and words in error["message"]
    assert error["code"] in ("unsupported_parameter", "unsupported_value")
    assert httpx.get(api_server.base_url + "/cache").json()["nodes"] == []


def test_fields_that_change_nothing_are_accepted(openai_client):
    reply = openai_client.responses.create(model=MODEL, input="hi", max_output_tokens=2, metadata={"run": "7"}, store=False,
                                           user="u1", tools=[], tool_choice="auto", truncation="disabled",
                                           text={"format": {"type": "text"}}, parallel_tool_calls=True)
    assert reply.metadata == {"run": "7"} and reply.usage.output_tokens <= 2
