"""Anthropic tool use on the chat path's pieces: the same tools block, grammar, parser and history format.

    tools [{name, description, input_schema}]   -> chat's `Tool`s: the same system-turn block (one
                                                    segment, first: Anthropic orders tools -> system)
                                                    and the same grammar for a forced call
    tool_choice auto | any | tool | none         -> chat's auto | required | named | none
    assistant tool_use blocks                    -> `<tool_call>` text, as chat renders tool_calls
    user tool_result blocks                      -> `tool` messages, as chat's tool messages
    a reply's `<tool_call>`s                     -> tool_use blocks (id "toolu_..."), stop_reason tool_use
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

from segcache.engine.grammar import Grammar
from segcache.engine.tools import ToolCall, ToolCallStream, parse_tool_calls
from segcache.server.errors import ApiError, validated
from segcache.server.generation import sse_data
from segcache.server.tool_protocol import FunctionDef, FunctionName, NamedToolChoice, Tool, reply_grammar

_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict
    cache_control: dict | None = None        # checked by the caller (anthropic_protocol.CacheControl)
    type: str | None = None                  # "custom" or absent; server tools are refused before this

    def chat_tool(self) -> Tool:
        return Tool(type="function", function=FunctionDef(name=self.name, description=self.description,
                                                          parameters=self.input_schema))


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ToolUseBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    id: str
    name: str
    input: dict
    cache_control: dict | None = None


class ToolResultBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    tool_use_id: str
    content: str | list[dict] = ""
    is_error: bool = False
    cache_control: dict | None = None


class ToolUse:
    """What a request's `tools` and `tool_choice` mean for its prompt, grammar and reply."""

    def __init__(self, tools: list[dict] | None, tool_choice: dict | None):
        self.tools = [validated(AnthropicTool, self._custom(t, i), f"tools[{i}]") for i, t in enumerate(tools or [])]
        self.choice = validated(AnthropicToolChoice, tool_choice or {"type": "auto"}, "tool_choice")
        self.chat_choice = self._chat_choice()
        self.chat_tools = [t.chat_tool() for t in self.tools]

    @staticmethod
    def _custom(tool, index: int):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise ApiError(400, f"tools[{index}]: server tools of type {kind!r} are not supported; send custom "
                           "tools ({name, description, input_schema})", "unsupported_parameter", f"tools[{index}]")
        return tool

    def _chat_choice(self):
        if self.choice.type == "tool":
            if not self.choice.name:
                raise ApiError(400, "tool_choice of type tool needs a `name`", "invalid_request", "tool_choice.name")
            return NamedToolChoice(type="function", function=FunctionName(name=self.choice.name))
        if self.choice.type not in _CHOICES:
            raise ApiError(400, "tool_choice.type must be one of auto, any, tool, none", "invalid_request",
                           "tool_choice.type")
        return _CHOICES[self.choice.type]

    def grammar(self) -> Grammar | None:
        try:
            return reply_grammar(self.chat_tools or None, self.chat_choice, None)
        except ValueError as exc:
            raise ApiError(400, str(exc).replace('"required"', '"any"'), "invalid_request", "tool_choice") from None

    @property
    def parses_calls(self) -> bool:
        return bool(self.tools) and self.chat_choice != "none"

    @property
    def max_calls(self) -> int | None:
        forced = self.chat_choice != "auto"
        return 1 if forced or self.choice.disable_parallel_tool_use else None

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        if not self.parses_calls:
            return text, []
        content, calls = parse_tool_calls(text)
        return content, calls[:self.max_calls]


def tool_use_block(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"), "name": call.name,
            "input": json.loads(call.arguments)}


def content_blocks(text: str, calls: list[ToolCall]) -> list[dict]:
    return ([{"type": "text", "text": text}] if text else []) + [tool_use_block(c) for c in calls]


class BlockStream:
    """Content block events for a streamed reply: text as it comes; tool_use blocks once complete.

    Without tools the text block opens at once (as before); with tools it opens with the first
    text, so a reply that only calls a tool is tool_use blocks alone, as Anthropic streams it.
    """

    def __init__(self, tool_use: ToolUse):
        self.tool_use = tool_use
        self.stream = ToolCallStream() if tool_use.parses_calls else None
        self.index = 0
        self.text_open = False
        self.calls: list[ToolCall] = []

    def start(self) -> Iterator[str]:
        if self.stream is None:
            yield from self._open_text()

    def text(self, delta: str) -> Iterator[str]:
        text = self.stream.add(delta) if self.stream is not None else delta
        if text:
            yield from self._open_text()
            yield sse_data({"type": "content_block_delta", "index": self.index,
                            "delta": {"type": "text_delta", "text": text}}, "content_block_delta")

    def finish(self) -> Iterator[str]:
        if self.stream is not None:
            content, calls = self.stream.finish()
            self.calls, self.stream = calls[:self.tool_use.max_calls], None
            yield from self.text(content) if content else ()
        if self.text_open:
            yield sse_data({"type": "content_block_stop", "index": self.index}, "content_block_stop")
            self.index += 1
        for call in self.calls:
            block = tool_use_block(call)
            yield sse_data({"type": "content_block_start", "index": self.index,
                            "content_block": dict(block, input={})}, "content_block_start")
            yield sse_data({"type": "content_block_delta", "index": self.index,
                            "delta": {"type": "input_json_delta", "partial_json": call.arguments}},
                           "content_block_delta")
            yield sse_data({"type": "content_block_stop", "index": self.index}, "content_block_stop")
            self.index += 1

    def _open_text(self) -> Iterator[str]:
        if not self.text_open:
            self.text_open = True
            yield sse_data({"type": "content_block_start", "index": self.index,
                            "content_block": {"type": "text", "text": ""}}, "content_block_start")
