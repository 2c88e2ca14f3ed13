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
Anthropic requires longer TTLs before shorter ones. `tools`, `tool_use` and `tool_result` are
refused until tool calls land; any other field that would change the reply is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SEGMENT_SEPARATOR, SegmentText
from segcache.engine.request import SamplingParams, SegmentInput
from segcache.server.errors import ApiError
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
        if self.tools or self.tool_choice not in (None, {"type": "auto"}, {"type": "none"}):
            _unsupported("tools" if self.tools else "tool_choice", "tool use is not supported on this server yet; "
                         "send the request without `tools` and `tool_choice`")
        if self.thinking not in (None, {"type": "disabled"}):
            _unsupported("thinking", "extended thinking is not supported by this server's model")
        for name in sorted(set(self.model_extra or {}) - HARMLESS_FIELDS):
            _unsupported(name, f"`{name}` is not supported by this server; leave it out")

    def prompt(self) -> AnthropicPrompt:
        return _map_prompt(self)


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


def _map_prompt(body: CountTokensRequest) -> AnthropicPrompt:
    system = _blocks(body.system, "system") if body.system is not None else []
    segments, rest, ttls = _system_segments(system)
    messages = [{"role": "system", "content": SEGMENT_SEPARATOR.join(b.text for b in rest)}] if rest else []
    last = Breakpoint("segment", len(segments) - 1) if segments else None
    for i, message in enumerate(body.messages):
        blocks = _blocks(message.content, f"messages[{i}].content")
        messages.append({"role": message.role, "content": SEGMENT_SEPARATOR.join(b.text for b in blocks)})
        marks = [b.cache_control for b in blocks if b.cache_control is not None]
        if i == len(body.messages) - 1 and body.cache_control is not None:
            marks.append(body.cache_control)
        if marks:
            last = Breakpoint("message", len(messages) - 1)
            ttls += [m.seconds for m in marks]
    _check_ttl_order(ttls)
    return AnthropicPrompt(tuple(segments), tuple(messages), ttls[0] if ttls else None, last)


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
        _unsupported(param, f"{param}: `{kind}` blocks are not supported on this server yet (tool use is "
                     "coming); send text blocks only")
    if kind != "text":
        _unsupported(param, f"{param}: blocks of type {kind!r} are not supported; send text blocks only")
    try:
        return TextBlock.model_validate(block)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([param, *map(str, first["loc"])])
        raise ApiError(400, f"{where}: {first['msg']}", "invalid_request", where) from None


def _check_ttl_order(ttls: list[float]) -> None:
    if any(later > earlier for earlier, later in zip(ttls, ttls[1:])):
        raise ApiError(400, "a cache_control with ttl '1h' must not come after one with ttl '5m' "
                       "(longer lifetimes first, in the order tools, system, messages)", "invalid_request",
                       "cache_control")


def _unsupported(param: str, message: str) -> None:
    raise ApiError(400, message, "unsupported_parameter", param)
