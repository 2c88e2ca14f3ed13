"""Anthropic Messages requests at the HTTP edge, and how their `cache_control` maps onto our tree.

Anthropic orders a prompt tools -> system -> messages, and a `cache_control` breakpoint caches
everything up to and including its block. segcache already caches every part of a prompt (each
segment, each message), so a breakpoint only has to make sure a part *ends* where it does:

    system:   [b0  b1*  b2  b3*  b4]            * = block with cache_control
          ->  segments [b0+b1, b2+b3], then b4 as the system message; all one system turn
    messages: [m0  m1*  m2]
          ->  message parts m0 | m1 | m2: every message is a part of its own already, so a
              breakpoint on any block of m1 ends with m1, and the next turn, which repeats
              m0..m2 and adds its own, reuses all of them.

Blocks are joined by a blank line, the same separator that joins segments, so where breakpoints
fall never changes the rendered text nor its token ids: only what can be reused. A system block
list with no breakpoint is the plain system message. A segment lives for its breakpoint's TTL;
the other parts (template markup, messages) for the first breakpoint's TTL, the longest, since
Anthropic requires longer TTLs before shorter ones. `tools` are one segment before the system
blocks (the chat path's tools block), ended by a breakpoint on any tool; `tool_use` and `tool_result`
blocks render as chat's tool calls and tool messages (see anthropic_tools.py). Any other field that
would change the reply is refused.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SEGMENT_SEPARATOR, SegmentText
from segcache.engine.tools import render_tool_call, tools_prompt
from segcache.engine.request import SamplingParams, SegmentInput
from segcache.server.anthropic_tools import ToolResultBlock, ToolUse, ToolUseBlock
from segcache.server.errors import ApiError, validated
from segcache.server.protocol import Text

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
# Fields that change nothing in the reply: accepted and left alone.
HARMLESS_FIELDS = frozenset({"metadata", "service_tier", "inference_geo", "speed", "user_profile_id", "workspace_id"})


class CacheControl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] = "5m"

    @property
    def seconds(self) -> float:
        return TTL_SECONDS[self.ttl]


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text = Field(min_length=1)
    cache_control: CacheControl | None = None


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: Text | list[dict] = Field(min_length=1)


class CountTokensRequest(BaseModel):
    """The prompt side of a request: what /v1/messages/count_tokens takes."""
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: Text | list[dict] | None = None
    cache_control: CacheControl | None = None     # automatic caching: a breakpoint on the last message
    tools: list[dict] | None = None
    tool_choice: dict | None = None
    thinking: dict | None = None

    def refuse_unsupported(self) -> None:
        """A 400 for every field we would otherwise ignore although it changes the reply."""
        if self.thinking not in (None, {"type": "disabled"}):
            _unsupported("thinking", "extended thinking is not supported by this server's model")
        for name in sorted(set(self.model_extra or {}) - HARMLESS_FIELDS):
            _unsupported(name, f"`{name}` is not supported by this server; leave it out")

    def tool_use(self) -> ToolUse:
        return ToolUse(self.tools, self.tool_choice)

    def prompt(self) -> AnthropicPrompt:
        return _map_prompt(self, self.tool_use())


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[Text] = Field(default_factory=list)
    temperature: float = Field(default=1.0, ge=0.0, le=1.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stream: bool = False

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_k is not None:
            _unsupported("top_k", "top_k sampling is not supported; use temperature and top_p")
        if self.messages[-1].role == "assistant":
            _unsupported("messages", "a reply that continues a final assistant message (prefill) is not "
                         "supported; end `messages` with a user turn")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=tuple(self.stop_sequences))


@dataclass(frozen=True)
class Breakpoint:
    """Where the last cache_control ends, counted in the prompt's parts of one kind."""
    kind: str            # segment | message
    index: int           # among the parts of that kind (messages count the system message first)


@dataclass(frozen=True)
class AnthropicPrompt:
    segments: tuple[SegmentInput, ...]
    messages: tuple[dict, ...]               # role/content, the system message (if any) first
    ttl_seconds: float | None                # for the parts that are not segments
    last_breakpoint: Breakpoint | None


# ---------------------------------------------------------------- mapping


def _map_prompt(body: CountTokensRequest, tool_use: ToolUse) -> AnthropicPrompt:
    system = _blocks(body.system, "system") if body.system is not None else []
    segments, rest, ttls = _system_segments(system)
    ended = bool(segments)                  # every system segment ends at a breakpoint
    tools, tools_ttl = _tools_segment(body, tool_use)
    if tools is not None:
        segments.insert(0, tools)
        ttls[:0] = [tools_ttl] if tools_ttl is not None else []
        ended = ended or tools_ttl is not None
    last = Breakpoint("segment", len(segments) - 1) if ended else None
    messages = [{"role": "system", "content": SEGMENT_SEPARATOR.join(b.text for b in rest)}] if rest else []
    for i, message in enumerate(body.messages):
        turns, marks = _turns(message, f"messages[{i}].content")
        messages += turns
        if i == len(body.messages) - 1 and body.cache_control is not None:
            marks.append(body.cache_control)
        if marks:
            last = Breakpoint("message", len(messages) - 1)
            ttls += [m.seconds for m in marks]
    _check_ttl_order(ttls)
    return AnthropicPrompt(tuple(segments), tuple(messages), ttls[0] if ttls else None, last)


def _tools_segment(body: CountTokensRequest, tool_use: ToolUse) -> tuple[SegmentInput | None, float | None]:
    """The chat path's tools block, as one segment; a breakpoint on any tool (usually the last) ends it."""
    if not tool_use.tools:
        return None, None
    marks = [validated(CacheControl, t.cache_control, f"tools[{i}].cache_control")
             for i, t in enumerate(tool_use.tools) if t.cache_control is not None]
    ttl = marks[-1].seconds if marks else None
    text = tools_prompt([t.spec() for t in tool_use.chat_tools])
    return SegmentInput(SegmentText(text, "tools", segment_hash(text)), ttl), ttl


def _turns(message: MessageParam, param: str) -> tuple[list[dict], list[CacheControl]]:
    """One Anthropic message as chat messages: text (+ tool calls) in its role; each tool_result a `tool` message."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}], []
    turns, texts, calls, marks = [], [], [], []
    for i, block in enumerate(message.content):
        where = f"{param}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use" and message.role == "assistant":
            use = validated(ToolUseBlock, block, where)
            calls.append(render_tool_call(use.name, json.dumps(use.input, ensure_ascii=False)))
            marks += _mark(use.cache_control, where)
        elif kind == "tool_result" and message.role == "user":
            result = validated(ToolResultBlock, block, where)
            if texts:
                turns.append({"role": "user", "content": SEGMENT_SEPARATOR.join(texts)})
                texts = []
            turns.append({"role": "tool", "content": _result_text(result, where)})
            marks += _mark(result.cache_control, where)
        else:
            text = _text_block(block, where)
            texts.append(text.text)
            marks += [text.cache_control] if text.cache_control is not None else []
    content = SEGMENT_SEPARATOR.join(texts)
    if calls:   # as chat renders an assistant message with tool_calls
        content = "\n".join([content, *calls]) if content else "\n".join(calls)
    if content or not turns:
        turns.append({"role": message.role, "content": content})
    return turns, marks


def _result_text(result: ToolResultBlock, param: str) -> str:
    if isinstance(result.content, str):
        text = result.content
    else:
        blocks = [_text_block(b, f"{param}.content[{i}]") for i, b in enumerate(result.content)]
        text = SEGMENT_SEPARATOR.join(b.text for b in blocks)
    return f"Error: {text}" if result.is_error else text


def _mark(cache_control: dict | None, param: str) -> list[CacheControl]:
    return [validated(CacheControl, cache_control, f"{param}.cache_control")] if cache_control is not None else []


def _system_segments(blocks: list[TextBlock]) -> tuple[list[SegmentInput], list[TextBlock], list[float]]:
    """Each breakpoint closes a segment of the blocks since the previous one; the rest stays behind."""
    segments, pending, ttls = [], [], []
    for block in blocks:
        pending.append(block)
        if block.cache_control is not None:
            content = SEGMENT_SEPARATOR.join(b.text for b in pending)
            text = SegmentText(content, f"system.{len(segments)}", segment_hash(content))
            segments.append(SegmentInput(text, block.cache_control.seconds))
            ttls.append(block.cache_control.seconds)
            pending = []
    return segments, pending, ttls


def _blocks(content: str | list[dict], param: str) -> list[TextBlock]:
    if isinstance(content, str):
        return [TextBlock(type="text", text=content)] if content else []
    return [_text_block(block, f"{param}[{i}]") for i, block in enumerate(content)]


def _text_block(block: dict, param: str) -> TextBlock:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind in ("tool_use", "tool_result"):
        owner = "assistant" if kind == "tool_use" else "user"
        raise ApiError(400, f"{param}: `{kind}` blocks belong in {owner} messages", "invalid_request", param)
    if kind != "text":
        _unsupported(param, f"{param}: blocks of type {kind!r} are not supported; send text, tool_use and "
                     "tool_result blocks")
    return validated(TextBlock, block, param)


def _check_ttl_order(ttls: list[float]) -> None:
    if any(later > earlier for earlier, later in zip(ttls, ttls[1:])):
        raise ApiError(400, "a cache_control with ttl '1h' must not come after one with ttl '5m' "
                       "(longer lifetimes first, in the order tools, system, messages)", "invalid_request",
                       "cache_control")


def _unsupported(param: str, message: str) -> None:
    raise ApiError(400, message, "unsupported_parameter", param)
