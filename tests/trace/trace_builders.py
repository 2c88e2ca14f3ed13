"""Builders for hand-made traces: ChatML prompts of distinct words, so the word tokenizer's counts are exact."""

from __future__ import annotations

from segcache.trace.chatml import render_message
from segcache.trace.readers import read_record
from segcache.trace.records import Trace


def words(tag: str, count: int) -> str:
    """`count` distinct words that occur nowhere else: tag1 tag2 ..."""
    return " ".join(f"{tag}{i}" for i in range(1, count + 1))


def chatml_input(*messages: tuple[str, str]) -> str:
    """Rendered ChatML for (role, content) pairs plus the generation prompt."""
    return "".join(render_message(role, content) for role, content in messages) + "<|im_start|>assistant\n"


def trace_of(*records: dict, name: str = "hand.jsonl") -> Trace:
    shapes_requests = [read_record(record) for record in records]
    return Trace(name, tuple(r for _, r in shapes_requests), tuple(dict.fromkeys(s for s, _ in shapes_requests)))
