"""A finished generation as OpenAI JSON: tool calls read from the text, whole and streamed."""

import json

from segcache.engine.request import Finished, TextDelta, TokenLogprob
from segcache.server.replies import ChatReply, CompletionReply

CALL = '<tool_call>\n{"name": "%s", "arguments": {"path": "a.py"}}\n</tool_call>'
TWO_CALLS = "Reading both.\n" + CALL % "read_file" + "\n" + CALL % "stat_file"


def finished(text: str, reason: str = "stop", logprobs=()) -> Finished:
    return Finished(reason, completion_tokens=len(text), text=text, decode_s=0.1, logprobs=logprobs)


def test_calls_become_tool_calls_and_the_reason_says_so():
    body = ChatReply("c1", "m", parse_tools=True, logprobs=False).body(finished(TWO_CALLS), {}, {})
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Reading both."
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["read_file", "stat_file"]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"path": "a.py"}


def test_without_parallel_calls_only_the_first_is_returned():
    body = ChatReply("c1", "m", True, False, parallel_tool_calls=False).body(finished(TWO_CALLS), {}, {})
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["read_file"]


def test_tool_choice_none_leaves_the_text_alone():
    body = ChatReply("c1", "m", parse_tools=False, logprobs=False).body(finished(TWO_CALLS), {}, {})
    assert body["choices"][0]["message"] == {"role": "assistant", "content": TWO_CALLS}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_streamed_calls_follow_the_content_and_end_with_their_reason():
    reply = ChatReply("c1", "m", parse_tools=True, logprobs=False)
    chunks = [c for piece in (TWO_CALLS[:9], TWO_CALLS[9:20], TWO_CALLS[20:]) for c in reply.chunks(TextDelta(piece))]
    chunks += reply.last_chunks(finished(TWO_CALLS))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content", "") for d in deltas) == "Reading both."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "read_file"), (1, "stat_file")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_completion_logprobs_offsets_count_from_the_echoed_prompt():
    logprobs = (TokenLogprob(" Paris", -0.1, ((" Paris", -0.1),)), TokenLogprob(".", -0.5, ((".", -0.5),)))
    body = CompletionReply("c1", "m", logprobs=True, echo="Capital:").body(finished(" Paris.", logprobs=logprobs), {}, {})
    choice = body["choices"][0]
    assert choice["text"] == "Capital: Paris."
    assert choice["logprobs"]["text_offset"] == [8, 14]
    assert choice["logprobs"]["top_logprobs"] == [{" Paris": -0.1}, {".": -0.5}]
