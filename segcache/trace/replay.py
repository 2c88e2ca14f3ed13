"""`segcache replay`: send a trace to a running segcache and set what it cached beside the prediction.

Each request goes out as the server's own API expects it: the leading system block as a segment, the
rest as messages (a prompt that is not ChatML goes to /v1/completions). The prediction builds the
same prompt parts the server builds (segcache.engine.prompt, same tokenizer), cuts them into the
server's blocks (segcache.engine.blocks, its --block-tokens) and runs the blocks through the tree
metric, so on an unlimited cache the two must agree to the token; a disagreement points at
eviction, expiry, another tenant's traffic, or a bug.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segcache.cache.keys import segment_hash
from segcache.engine.blocks import plan_blocks
from segcache.engine.prompt import SegmentText, build_chat_prompt, build_completion_prompt
from segcache.trace import chatml
from segcache.trace.records import TraceRequest
from segcache.trace.tree_metric import tree_hits

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class ReplayCall:
    """One request as replay sends it: segments plus messages (chat) or plus a prompt (completions)."""

    segments: tuple[dict, ...]  # {id, hash, content}
    messages: tuple[dict, ...] | None  # {role, content}; None for a completions call
    prompt: str | None = None


@dataclass(frozen=True)
class Prediction:
    input_tokens: int
    cached_tokens: int


def call_of(request: TraceRequest) -> ReplayCall:
    """How to send a trace request: as recorded by segcache, as logged messages, or cut from ChatML."""
    if request.segments is not None or request.endpoint == "completions":  # segcache's own log
        segments = tuple(_segment(s.get("content") or "", s.get("id")) for s in request.segments or ())
        if request.endpoint == "completions":
            return ReplayCall(segments, None, "".join(p.text for p in request.parts if p.kind == "prompt"))
        return ReplayCall(segments, _chat_messages(request.messages or ()))
    messages = request.messages
    if messages is None:
        cut = [chatml.message_of(p) for p in request.parts if p.kind != "generation"]
        if not cut or None in cut or request.parts[-1].kind != "generation":
            return ReplayCall((), None, request.input)  # not plain ChatML: send the text as it is
        messages = tuple(cut)  # type: ignore[arg-type]
    return _with_system_segment(_chat_messages(messages))


def truncate(call: ReplayCall, tokenizer, max_tokens: int) -> ReplayCall:
    """Keep about `max_tokens` tokens of content, spent in order (segments, then messages or prompt).

    The cut is the same wherever two requests share their beginning, so reuse survives truncation;
    messages past the budget are dropped, but a chat keeps at least its first message.
    """
    budget = [max_tokens]
    segments = tuple(replace_content(s, _cut(tokenizer, s["content"], budget)) for s in call.segments)
    if call.messages is None:
        return ReplayCall(segments, None, _cut(tokenizer, call.prompt or "", budget))
    messages = []
    for message in call.messages:
        if budget[0] == 0 and messages:
            break
        messages.append({**message, "content": _cut(tokenizer, message["content"], budget)})
    return ReplayCall(segments, tuple(messages))


def replace_content(segment: dict, content: str) -> dict:
    return segment if content == segment["content"] else _segment(content, segment.get("id"))


def predict(calls: Sequence[ReplayCall], tokenizer, block_tokens: int,
            pool_tokens: int | None = None) -> list[Prediction]:
    """Input and cached tokens per call: the server's prompt parts, cut into its blocks of at most
    `block_tokens` tokens, through the tree metric (the last block is always computed)."""
    prompts = [_prompt(call, tokenizer) for call in calls]
    blocks = [[block.spec for block in plan_blocks(prompt.parts, block_tokens)] for prompt in prompts]
    cached = tree_hits(blocks, pool_tokens)
    return [Prediction(len(prompt.token_ids), hit) for prompt, hit in zip(prompts, cached)]


def _prompt(call: ReplayCall, tokenizer):
    segments = [SegmentText(s["content"], s.get("id"), s.get("hash")) for s in call.segments]
    if call.messages is None:
        return build_completion_prompt(tokenizer, segments, call.prompt or "")
    return build_chat_prompt(tokenizer, segments, [dict(m) for m in call.messages])


def _with_system_segment(messages: tuple[dict, ...]) -> ReplayCall:
    """The leading system message becomes a segment (it renders the same, inside the system turn)."""
    if len(messages) > 1 and messages[0]["role"] == "system" and messages[0]["content"]:
        return ReplayCall((_segment(messages[0]["content"], "system"),), messages[1:])
    return ReplayCall((), messages)


def _chat_messages(messages: Sequence[dict]) -> tuple[dict, ...]:
    """{role, content} with a role the API accepts (others are sent as user)."""
    return tuple({"role": m["role"] if m["role"] in CHAT_ROLES else "user", "content": m["content"]}
                 for m in messages)


def _segment(content: str, segment_id: str | None) -> dict:
    return {"id": segment_id, "hash": segment_hash(content), "content": content}


def _cut(tokenizer, text: str, budget: list[int]) -> str:
    """The first budget[0] tokens of `text` (cut at a token start); spends them from the budget."""
    if not text:
        return text
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    num_tokens = len(encoded["input_ids"])
    if num_tokens <= budget[0]:
        budget[0] -= num_tokens
        return text
    keep = budget[0]
    budget[0] = 0
    return text[: encoded["offset_mapping"][keep][0]] if keep else ""
