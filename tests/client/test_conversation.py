"""Cache-aligned compaction against a real segcache server."""

import pytest

from segcache.client import Client, Conversation, Segment
from segcache.client.conversation import PLAIN_SUMMARY_SYSTEM, SUMMARY_PREFIX

SEGMENTS = [Segment("Global rules: answer briefly, cite the file you changed. " * 6, id="rules"),
            Segment("Backend skills: Python services, SQL migrations. " * 4, id="backend")]
TOOLS = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
INSTRUCTION = "Summarise the conversation so far in two sentences."
GENERATION_PROMPT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def module_server(serve_for_module):
    return serve_for_module("--model", "tiny", "--cache-bytes", "64MiB")


@pytest.fixture
def server(module_server):
    """The module's server, its cache and segment texts cleared."""
    return module_server.cleared()


def converse(client, recorder=None):
    conversation = Conversation(client, client.openai.models.list().data[0].id, SEGMENTS, TOOLS, label="main")
    conversation.send("The /orders endpoint fails on an empty cart.", max_tokens=8, temperature=0)
    conversation.send("Write the fix.", max_tokens=8, temperature=0)
    return conversation


def test_compaction_reads_all_but_the_last_reply_and_the_instruction_from_cache(server, tokenize):
    conversation = converse(Client(server.base_url))
    main_turn = conversation.last_response.usage
    last_reply = conversation.history[-1]["content"]
    conversation.compact(INSTRUCTION, max_tokens=8, temperature=0)
    compaction = conversation.last_response.usage
    # Cached: the last main-loop prompt without its generation prompt (decode KV is not stored).
    assert compaction.cached_prefix_tokens == main_turn.input_tokens - len(tokenize(GENERATION_PROMPT))
    computed = (f"<|im_start|>assistant\n{last_reply}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}<|im_end|>\n"
                + GENERATION_PROMPT)
    assert compaction.input_tokens - compaction.cached_prefix_tokens == len(tokenize(computed))
    # the tool schemas are a block of the system turn too, after the segments
    assert [(s["id"], s["status"]) for s in compaction.segments] == [("rules", "hit"), ("backend", "hit"), ("tools", "hit")]


def test_compaction_request_is_the_main_loop_request_plus_the_instruction(server, recorder):
    conversation = converse(Client(server.base_url, http_client=recorder.client()))
    history = list(conversation.history)
    summary = conversation.compact(INSTRUCTION, max_tokens=8, temperature=0)
    main, compaction = recorder.bodies[-2], recorder.bodies[-1]
    assert compaction["messages"] == history + [{"role": "user", "content": INSTRUCTION}]
    assert main["messages"] == history[:-1]
    assert compaction["tools"] == main["tools"] == TOOLS
    assert compaction["tool_choice"] == "none" and "tool_choice" not in main
    assert [s["hash"] for s in compaction["segments"]] == [s["hash"] for s in main["segments"]]
    assert conversation.history == [{"role": "user", "content": SUMMARY_PREFIX + summary}]


def test_compaction_by_another_model_takes_the_plain_path(serve, server, recorder):
    conversation = converse(Client(server.base_url))
    history = list(conversation.history)
    summariser = serve("--model", "tiny", "--model-id", "summariser")
    other = Client(summariser.base_url, http_client=recorder.client())
    summary = conversation.compact(INSTRUCTION, model="summariser", client=other, max_tokens=8, temperature=0)
    (body,) = recorder.bodies
    assert body["model"] == "summariser" and "segments" not in body and "tools" not in body
    assert body["messages"][0] == {"role": "system", "content": PLAIN_SUMMARY_SYSTEM}
    assert history[0]["content"] in body["messages"][1]["content"]
    assert body["messages"][1]["content"].endswith(INSTRUCTION)
    assert conversation.history == [{"role": "user", "content": SUMMARY_PREFIX + summary}]
