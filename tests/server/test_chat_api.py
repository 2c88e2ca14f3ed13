"""The chat API through a real uvicorn server on loopback and the official openai SDK."""

from segcache.cache.keys import segment_hash
from segcache.engine import native

A = "Global rules: you are one agent of a team building a web shop. Be brief. Name the file you change."
B = "Backend skills: Python, FastAPI, PostgreSQL. You own api.py and models.py."
C = "Frontend skills: TypeScript and React. You own the files under ui/."
D = "Add an endpoint that lists orders."
E = "Make the checkout button accessible."


def segments(*blocks, content=True):
    names = {A: "global", B: "backend", C: "frontend"}
    return [{"id": names[b], "hash": segment_hash(b), **({"content": b} if content else {})} for b in blocks]


def ask(client, blocks, question, **extra):
    return client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": question}], max_tokens=4,
        temperature=0, extra_body={"segments": segments(*blocks), **extra})



def test_three_agents_report_exact_cached_prefixes(openai_client, api_server, count_tokens):
    head = "<|im_start|>system\n"
    one = ask(openai_client, [A, B], D)
    assert one.usage.cached_prefix_tokens == 0
    two = ask(openai_client, [A, C], E)
    assert two.usage.cached_prefix_tokens == count_tokens(head + A)
    assert [(s["id"], s["status"], s["reason"]) for s in two.usage.segments] == [
        ("global", "hit", None), ("frontend", "computed", "new")]
    three = ask(openai_client, [A, B], E)
    # A, B and the end of the system turn: everything before agent 3's own message.
    assert three.usage.cached_prefix_tokens == count_tokens(head + A + "\n\n" + B + "<|im_end|>\n")
    assert [s["status"] for s in three.usage.segments] == ["hit", "hit"]
    assert three.usage.prompt_tokens_details.cached_tokens == three.usage.cached_prefix_tokens
    assert three.usage.input_tokens == three.usage.prompt_tokens
    assert three.usage.output_tokens == three.usage.completion_tokens
    api_server.engine.tree.check()


def test_plain_chat_turns_are_cached(openai_client, tokenizer, count_tokens):
    messages = [{"role": "user", "content": "Say hi."}]
    first = openai_client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=3, temperature=0)
    assert first.usage.cached_prefix_tokens == 0
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "Again."}]
    second = openai_client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=3, temperature=0)
    rendered = tokenizer.apply_chat_template(messages[:1], tokenize=False)
    assert second.usage.cached_prefix_tokens == count_tokens(rendered)


def test_hash_only_reference_after_first_send(openai_client):
    ask(openai_client, [A], D)
    reply = openai_client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": E}], max_tokens=2, temperature=0,
        extra_body={"segments": segments(A, content=False)})
    assert reply.usage.segments[0]["status"] == "hit"


def test_streaming_sends_usage_in_the_last_chunk(openai_client):
    stream = openai_client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Count to three."}], max_tokens=5,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"segments": segments(A)})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 5 or chunks[-1].usage.completion_tokens < 5
    assert chunks[-1].usage.segments[0]["id"] == "global"
    plain = openai_client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Count to three."}], max_tokens=5,
        temperature=0, extra_body={"segments": segments(A)})
    assert text == plain.choices[0].message.content


def test_stop_sequences_and_max_tokens(openai_client):
    free = openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0,
                                                 messages=[{"role": "user", "content": "List three colours."}])
    text = free.choices[0].message.content
    assert free.usage.completion_tokens <= 12
    stop = text.strip()[3:6]
    stopped = openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0, stop=[stop],
                                                    messages=[{"role": "user", "content": "List three colours."}])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_seeded_sampling_is_repeatable(openai_client):
    def sample(seed):
        return openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=6, temperature=1.0,
                                                     top_p=0.9, seed=seed,
                                                     messages=[{"role": "user", "content": "Tell me a word."}])
    assert sample(7).choices[0].message.content == sample(7).choices[0].message.content


def test_completions_take_segments_before_the_prompt(openai_client, count_tokens):
    first = openai_client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=3,
                                             temperature=0, extra_body={"segments": [{"id": "ctx", "content": "Geography quiz.\n"}]})
    assert first.usage.prompt_tokens == count_tokens("Geography quiz.\nThe capital of France is")
    second = openai_client.completions.create(model="smollm2-135m-instruct", prompt="The capital of Italy is", max_tokens=3,
                                              temperature=0, extra_body={"segments": [{"id": "ctx", "content": "Geography quiz.\n"}]})
    assert second.usage.cached_prefix_tokens == count_tokens("Geography quiz.\n")


def test_models_and_health(openai_client, api_server):
    import httpx

    assert [m.id for m in openai_client.models.list().data] == ["smollm2-135m-instruct"]
    health = httpx.get(api_server.url + "/health").json()
    assert health["status"] == "ok"
    weights = api_server.engine.loaded.weights.format   # int4 on a bfloat16 CPU (auto), else float32
    assert health["weights"] == weights == openai_client.models.list().data[0].to_dict()["weights"]
    paths = health["kernel_paths"]
    assert set(paths) == {"projections", "prefill", "decode"}
    if native.unavailable_reason() is None and weights == "int4":     # what serves each forward here
        assert paths["projections"].startswith("amx-int8 tiles" if native.slab_tiles() else "avx512-vnni slabs")
        assert paths["decode"].startswith("one native call")
    if native.amx_unavailable_reason() is None and weights == "int4":
        assert paths["prefill"].startswith("amx-bf16")


def test_tools_are_rendered_and_cached_like_a_segment(openai_client):
    tools = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                               "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
    plain = openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=1, temperature=0,
                                                  messages=[{"role": "user", "content": "hi"}])
    first = openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=1, temperature=0, tools=tools,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens + 10
    second = openai_client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=1, temperature=0, tools=tools,
                                                   tool_choice="none", messages=[{"role": "user", "content": "bye"}])
    assert [(s["id"], s["status"]) for s in second.usage.segments] == [("tools", "hit")]
