"""ChatML rendering and cutting: parts concatenate to the text, messages come back out."""

from __future__ import annotations

from segcache.trace.chatml import message_of, parse_parts, render_parts
from segcache.trace.records import Part


def test_parse_inverts_render():
    messages = [{"role": "system", "content": "rules\n\nmore"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""}]
    parts = render_parts(messages)
    assert parse_parts("".join(p.text for p in parts)) == parts
    assert [message_of(p) for p in parts[:-1]] == messages and message_of(parts[-1]) is None


def test_text_before_the_first_turn_is_a_head():
    parts = parse_parts("<s><|im_start|>user\nhi<|im_end|>\n")
    assert [(p.kind, p.text) for p in parts] == [("head", "<s>"), ("message", "<|im_start|>user\nhi<|im_end|>\n")]


def test_a_turn_with_trailing_text_is_not_a_plain_message():
    part = Part("message", "user", "<|im_start|>user\nhi<|im_end|>\nextra")
    assert message_of(part) is None
