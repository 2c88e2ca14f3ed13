"""POST /v1/messages through a real server and the official anthropic SDK."""

import time

import anthropic
import httpx
import pytest

from segcache.config import ServeConfig

MODEL = "smollm2-135m-instruct"
A = "Global rules: you are one agent of a team building a web shop. Be brief. Name the file you change."
B = "Backend skills: Python, FastAPI, PostgreSQL. You own api.py and models.py."
D = "Add an endpoint that lists orders."
E = "Make the checkout button accessible."
HEAD, END = "<|im_start|>system\n", "<|im_end|>\n"
# The SDK no longer has a temperature argument (new Claude models fix it); older clients still send it.
GREEDY = {"temperature": 0}


def cached(text, ttl=None):
    return {"type": "text", "text": text, "cache_control": {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}}


def ask(client, question, system=(A,), max_tokens=4, **extra):
    return client.messages.create(model=MODEL, max_tokens=max_tokens, extra_body=GREEDY, system=[cached(s) for s in system],
                                  messages=[{"role": "user", "content": question}], **extra)


def test_second_call_reads_the_cached_system_block(anthropic_client, tokenizer, api_server, count_tokens):
    first = ask(anthropic_client, D)
    system_turn = count_tokens(HEAD + A + END)
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens == count_tokens(HEAD + A)   # up to the breakpoint
    second = ask(anthropic_client, E)
    assert second.usage.cache_read_input_tokens == system_turn
    assert second.usage.cache_creation_input_tokens == 0
    total = count_tokens(tokenizer.apply_chat_template(
        [{"role": "system", "content": A}, {"role": "user", "content": E}], tokenize=False, add_generation_prompt=True))
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == total
    assert [(s["id"], s["status"]) for s in second.usage.segments] == [("system.0", "hit")]
    assert second.type == "message" and second.role == "assistant" and second.content[0].type == "text"
    assert second.stop_reason in ("end_turn", "max_tokens")
    api_server.engine.tree.check()


def test_streamed_call_reads_the_cache_and_says_the_same(anthropic_client, count_tokens):
    plain = ask(anthropic_client, D)
    with anthropic_client.messages.stream(model=MODEL, max_tokens=4, extra_body=GREEDY, system=[cached(A)],
                                          messages=[{"role": "user", "content": E}]) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) <= {"content_block_delta", "text"}
    assert final.usage.cache_read_input_tokens == count_tokens(HEAD + A + END)
    assert final.usage.output_tokens == 4 or final.stop_reason == "end_turn"
    again = ask(anthropic_client, E)
    assert final.content[0].text == again.content[0].text
    assert plain.usage.cache_read_input_tokens == 0


def test_messages_and_chat_with_segments_hit_the_same_nodes(anthropic_client, api_server):
    """The same prompt through both APIs: identical tokens, so the second request adds no node."""
    system = [cached(A), cached(B), {"type": "text", "text": "Today is Tuesday."}]
    reply = anthropic_client.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY, system=system,
                                             messages=[{"role": "user", "content": D}])
    nodes = httpx.get(api_server.base_url + "/cache").json()["nodes"]
    chat = httpx.post(api_server.base_url + "/chat/completions", json={
        "model": MODEL, "max_tokens": 3, "temperature": 0,
        "segments": [{"id": "a", "content": A}, {"id": "b", "content": B}],
        "messages": [{"role": "system", "content": "Today is Tuesday."}, {"role": "user", "content": D}]}).json()
    after = httpx.get(api_server.base_url + "/cache").json()["nodes"]
    assert [(n["key"], n["start"], n["tokens"]) for n in after] == [(n["key"], n["start"], n["tokens"]) for n in nodes]
    prompt_tokens = reply.usage.input_tokens + reply.usage.cache_read_input_tokens + reply.usage.cache_creation_input_tokens
    assert chat["usage"]["prompt_tokens"] == prompt_tokens
    generation_part = nodes[-1]["tokens"]        # "<|im_start|>assistant\n": always computed
    assert chat["usage"]["cached_prefix_tokens"] == prompt_tokens - generation_part
    assert chat["choices"][0]["message"]["content"] == reply.content[0].text


def test_a_breakpoint_in_messages_is_reused_by_the_next_turn(anthropic_client, tokenizer, count_tokens):
    turn = [{"role": "user", "content": [{"type": "text", "text": D, "cache_control": {"type": "ephemeral"}}]}]
    first = anthropic_client.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY, system=A, messages=turn)
    assert first.usage.cache_creation_input_tokens == count_tokens(tokenizer.apply_chat_template(
        [{"role": "system", "content": A}, {"role": "user", "content": D}], tokenize=False))
    history = turn + [{"role": "assistant", "content": first.content[0].text}, {"role": "user", "content": E}]
    second = anthropic_client.messages.create(model=MODEL, max_tokens=3, extra_body=GREEDY, system=A, messages=history)
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_stop_sequence_is_named(anthropic_client):
    free = ask(anthropic_client, "List three colours.", max_tokens=12)
    text = free.content[0].text
    stop = text.strip()[3:6]
    stopped = ask(anthropic_client, "List three colours.", max_tokens=12, stop_sequences=[stop])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert stopped.content[0].text == text[: text.index(stop)]


def test_count_tokens_counts_the_whole_prompt(anthropic_client, tokenizer, count_tokens):
    counted = anthropic_client.messages.count_tokens(model=MODEL, system=[cached(A)], messages=[{"role": "user", "content": D}])
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": A}, {"role": "user", "content": D}],
                                             tokenize=False, add_generation_prompt=True)
    assert counted.input_tokens == count_tokens(rendered)


def test_breakpoint_ttls_set_the_lifetime_of_parts(anthropic_client, api_server):
    anthropic_client.messages.create(model=MODEL, max_tokens=1, extra_body=GREEDY, system=[cached(A, "1h"), cached(B, "5m")],
                                     messages=[{"role": "user", "content": D}])
    now = time.time()
    nodes = sorted(httpx.get(api_server.base_url + "/cache").json()["nodes"], key=lambda n: n["start"])
    lifetimes = [round((n["expires_at"] - now) / 60) for n in nodes]
    # head and A: 1h; B: 5m; the rest of the prompt: the first (longest) breakpoint's ttl
    assert lifetimes == [60, 60, 5] + [60] * (len(nodes) - 3)


def test_a_longer_ttl_after_a_shorter_one_is_refused(api_server):
    reply = httpx.post(api_server.url + "/v1/messages", json={
        "model": MODEL, "max_tokens": 1, "system": [cached(A, "5m"), cached(B, "1h")],
        "messages": [{"role": "user", "content": D}]})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(api_server.base_url + "/cache").json()["nodes"] == []


def test_cached_messages_reply_equals_the_uncached_one(anthropic_client, app_server, load):
    """The invariant through this API: a reply read from a warm cache equals one with the cache off."""
    ask(anthropic_client, D, system=(A, B), max_tokens=8)
    warm = ask(anthropic_client, E, system=(A, B), max_tokens=8)
    assert warm.usage.cache_read_input_tokens > 0
    off = app_server(ServeConfig(model="default", cache_bytes=0), load("default", "auto"))
    cold = ask(anthropic.Anthropic(base_url=off.url, api_key="unused", max_retries=0), E, system=(A, B), max_tokens=8)
    assert (cold.usage.cache_read_input_tokens, cold.usage.cache_creation_input_tokens) == (0, 0)
    assert cold.content[0].text == warm.content[0].text
    assert cold.usage.output_tokens == warm.usage.output_tokens
