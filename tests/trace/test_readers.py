"""Reading the three trace shapes into requests made of parts."""

from __future__ import annotations

import pytest

from segcache.trace.chatml import IM_END, IM_START
from segcache.trace.readers import read_trace

SYSTEM_TURN = f"{IM_START}system\nbe brief{IM_END}\n"


def test_input_output_lines_are_cut_into_chatml_parts(write_jsonl):
    prompt = SYSTEM_TURN + f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    trace = read_trace(write_jsonl([{"input": prompt, "output": "hello", "timestamp": 12.5, "session_id": "s1",
                                     "model": "m"}]))
    request = trace.requests[0]
    assert trace.shapes == ("input-output",) and trace.name == "trace.jsonl"
    assert [(p.kind, p.role) for p in request.parts] == [("message", "system"), ("message", "user"),
                                                         ("generation", "assistant")]
    assert (request.output, request.timestamp, request.session_id, request.model) == ("hello", 12.5, "s1", "m")


def test_input_that_is_not_chatml_is_one_prompt_part(write_jsonl):
    request = read_trace(write_jsonl([{"input": "Q: 2+2?\nA:", "output": " 4"}])).requests[0]
    assert [(p.kind, p.text) for p in request.parts] == [("prompt", "Q: 2+2?\nA:")]


def test_openai_chat_logs_render_messages_tools_and_replies(write_jsonl):
    tools = [{"type": "function", "function": {"name": "read_file"}}]
    flat = {"model": "gpt", "messages": [{"role": "system", "content": "rules"},
                                         {"role": "user", "content": [{"type": "text", "text": "look"}]}],
            "tools": tools, "response": {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}}
    wrapped = {"request": {"messages": [{"role": "user", "content": "go"},
                                        {"role": "assistant", "content": None,
                                         "tool_calls": [{"function": {"name": "ls", "arguments": "{}"}}]}]},
               "response": {"choices": [{"message": {"content": "done"}}]}, "timestamp": 3}
    trace = read_trace(write_jsonl([flat, wrapped]))
    first, second = trace.requests
    assert trace.shapes == ("openai-chat",)
    assert first.messages[0] == {"role": "system", "content": 'rules\n\n# Tools\n\n{"type": "function", '
                                                              '"function": {"name": "read_file"}}'}
    assert first.input.endswith(f"{IM_START}user\nlook{IM_END}\n{IM_START}assistant\n")
    assert (first.output, first.model, second.output, second.timestamp) == ("ok", "gpt", "done", 3)
    assert '<tool_call>\n{"name": "ls", "arguments": "{}"}\n</tool_call>' in second.messages[1]["content"]


def test_segcache_log_records_keep_their_parts_and_token_counts(write_jsonl):
    parts = [{"kind": "head", "role": "system", "id": None, "hash": None, "text": f"{IM_START}system\n",
              "tokens": 3, "cached_tokens": 3},
             {"kind": "segment", "role": "system", "id": "rules", "hash": "sha256:00", "text": "be brief",
              "tokens": 2, "cached_tokens": 0},
             {"kind": "template", "role": "system", "id": None, "hash": None, "text": f"{IM_END}\n",
              "tokens": 2, "cached_tokens": 0}]
    record = {"time": 1.0, "tenant": "acme", "model": "m", "endpoint": "chat.completions", "parts": parts,
              "input": SYSTEM_TURN, "output": "x", "messages": [], "segments": [{"id": "rules", "content": "be brief"}],
              "usage": {"cached_prefix_tokens": 3}, "timings": {}}
    request = read_trace(write_jsonl([record])).requests[0]
    assert [p.kind for p in request.parts] == ["head", "segment", "template"]
    assert request.part_tokens == (3, 2, 2) and request.served_cached_tokens == 3
    assert request.segments == ({"id": "rules", "content": "be brief"},) and request.tenant == "acme"


def test_log_records_whose_parts_disagree_with_the_input_are_recut(write_jsonl):
    record = {"parts": [{"kind": "prompt", "text": "other", "tokens": 1}], "input": SYSTEM_TURN, "output": ""}
    request = read_trace(write_jsonl([record])).requests[0]
    assert [(p.kind, p.role) for p in request.parts] == [("message", "system")] and request.part_tokens is None


def test_a_mixed_file_reports_every_shape(write_jsonl):
    trace = read_trace(write_jsonl([{"input": "a", "output": "b"}, {"messages": [{"role": "user", "content": "c"}]}]))
    assert trace.shapes == ("input-output", "openai-chat")


@pytest.mark.parametrize("line, message", [
    ("not json", "trace.jsonl:2"),
    ('{"foo": 1}', "unknown record shape"),
    ("[1, 2]", "each line must be a JSON object"),
])
def test_bad_lines_are_reported_with_their_line_number(tmp_path, line, message):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"input": "ok", "output": ""}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_trace(path)


def test_an_empty_file_says_what_was_expected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="one JSON object per line"):
        read_trace(path)
