"""Reading tool calls out of a reply, whole and streamed, and writing them back into a conversation."""

import json

from segcache.engine.tools import CLOSE, OPEN, ToolCallStream, parse_tool_calls, render_tool_call

CALL = f'{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n{CLOSE}'


def test_a_reply_with_text_and_two_calls_splits_into_content_and_calls():
    content, calls = parse_tool_calls(f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Rome')}")
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                    ("get_weather", {"city": "Rome"})]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


def test_a_malformed_call_stays_content():
    text = f'{OPEN}\n{{"name": "get_weather", "arguments": {{"city": \n{CLOSE}'
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    assert parse_tool_calls(f'{OPEN}{{"arguments": {{}}}}{CLOSE}')[1] == []       # no name


def test_streaming_emits_content_until_a_call_may_begin():
    stream = ToolCallStream()
    emitted = [stream.add(piece) for piece in ["Let me ", "check.<tool", "_call>\n{\"name\": \"get_weather\", ",
                                                '"arguments": {"city": "Paris"}}\n', CLOSE]]
    assert emitted == ["Let me", " check.", "", "", ""]    # blank space waits: it may precede a call
    content, calls = stream.finish()
    assert content == "" and [c.name for c in calls] == ["get_weather"]


def test_streaming_a_reply_that_only_looks_like_a_call_gives_it_back_as_content():
    stream = ToolCallStream()
    assert stream.add("a <tool") == "a"
    assert stream.add("box> b ") == " <toolbox> b"
    assert stream.finish() == (" ", [])


def test_a_call_rendered_back_parses_to_the_same_call():
    rendered = render_tool_call("get_weather", '{"city": "Paris"}')
    assert rendered == CALL
    (call,) = parse_tool_calls(rendered)[1]
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
