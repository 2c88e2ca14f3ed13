"""Function tools on /v1/responses, on the chat path's pieces: the same tools block, grammar and parser.

    tools [{"type": "function", name, parameters}]  -> chat's `Tool`s (one segment after the system
                                                       blocks, as on chat completions); other tool
                                                       types are a 400 unsupported_parameter
    tool_choice auto | none | required | {"type": "function", "name"}  -> chat's choices
    input function_call items         -> `<tool_call>` text in the assistant turn, as chat renders tool_calls
    input function_call_output items  -> `tool` messages, as chat's tool messages
    a reply's `<tool_call>`s          -> output items of type function_call (with `call_id`)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from segcache.engine.grammar import Grammar
from segcache.engine.tools import ToolCall, ToolCallStream, parse_tool_calls, render_tool_call
from segcache.server import protocol
from segcache.server.errors import ApiError, validated
from segcache.server.tool_protocol import FunctionDef, FunctionName, NamedToolChoice, Tool, reply_grammar


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionOutputItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    call_id: str
    output: str | list[dict]
    id: str | None = None
    status: str | None = None


class FunctionTools:
    """What a request's `tools`, `tool_choice` and `parallel_tool_calls` mean for prompt, grammar and reply."""

    def __init__(self, tools: list | None, tool_choice, parallel: bool | None):
        self.tools = [self._function(t, f"tools[{i}]") for i, t in enumerate(tools or [])]
        self.chat_tools = [Tool(type="function", function=FunctionDef(
            name=t.name, description=t.description, parameters=t.parameters)) for t in self.tools]
        self.choice = tool_choice if tool_choice is not None else "auto"
        self.chat_choice = self._chat_choice(self.choice)
        self.max_calls = 1 if self.chat_choice not in ("auto", "none") or parallel is False else None

    @staticmethod
    def _function(tool, param: str) -> FunctionTool:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise ApiError(400, f"{param}: tools of type {kind!r} are not supported; this server runs function "
                           "tools only", "unsupported_parameter", param)
        return validated(FunctionTool, tool, param)

    @staticmethod
    def _chat_choice(choice):
        if choice in ("auto", "none", "required"):
            return choice
        if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
            return NamedToolChoice(type="function", function=FunctionName(name=choice["name"]))
        raise ApiError(400, "tool_choice must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
                       "unsupported_parameter", "tool_choice")

    def grammar(self) -> Grammar | None:
        try:
            return reply_grammar(self.chat_tools or None, self.chat_choice, None)
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_request", "tool_choice") from None

    @property
    def parses_calls(self) -> bool:
        return bool(self.tools) and self.chat_choice != "none"

    def split(self, text: str) -> tuple[str, list[ToolCall]]:
        if not self.parses_calls:
            return text, []
        content, calls = parse_tool_calls(text)
        return content, calls[:self.max_calls]

    def echo(self) -> tuple[list[dict], object]:
        """`tools` and `tool_choice` as the response object repeats them."""
        return [t.model_dump() for t in self.tools], self.choice if self.tools else "none"


def add_tool_item(messages: list[tuple[int, dict]], item: dict, index: int) -> None:
    """A function_call joins the assistant turn before it (as chat's tool_calls do); an output is a tool turn."""
    param = f"input[{index}]"
    if item["type"] == "function_call":
        call = validated(FunctionCallItem, item, param)
        text = render_tool_call(call.name, call.arguments)
        if messages and messages[-1][1]["role"] == "assistant":
            last = messages[-1][1]
            last["content"] = f"{last['content']}\n{text}" if last["content"] else text
        else:
            messages.append((index, {"role": "assistant", "content": text}))
        return
    output = validated(FunctionOutputItem, item, param)
    text = output.output if isinstance(output.output, str) else "".join(
        p.get("text", "") for p in output.output if isinstance(p, dict) and p.get("type") == "input_text")
    messages.append((index, {"role": "tool", "content": text}))


def call_item(call: ToolCall, item_id: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
            "arguments": call.arguments if status == "completed" else "", "status": status}


def new_item_id(prefix: str) -> str:
    return protocol.new_id(prefix).replace("-", "_")


class CallEvents:
    """Streamed events for the reply's function calls, after its message (if any)."""

    def __init__(self, tools: FunctionTools):
        self.tools = tools
        self.stream = ToolCallStream() if tools.parses_calls else None

    def text(self, delta: str) -> str:
        return self.stream.add(delta) if self.stream is not None else delta

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.stream is None:
            return "", []
        content, calls = self.stream.finish()
        return content, calls[:self.tools.max_calls]

    @staticmethod
    def events(event: Callable[..., str], items: list[tuple[ToolCall, str]], first_index: int) -> Iterator[str]:
        for offset, (call, item_id) in enumerate(items):
            where = {"item_id": item_id, "output_index": first_index + offset}
            yield event("response.output_item.added", output_index=where["output_index"],
                        item=call_item(call, item_id, "in_progress"))
            yield event("response.function_call_arguments.delta", **where, delta=call.arguments)
            yield event("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
            yield event("response.output_item.done", output_index=where["output_index"], item=call_item(call, item_id))

