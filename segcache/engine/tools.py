"""Tool calls as the model writes them: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

SmolLM2 and the Hermes/Qwen family of chat templates use this format. Plain functions and small
dataclasses, no torch and no HTTP, so every API surface (OpenAI chat, Anthropic messages,
Responses) can share them:

    tools_prompt(specs)          the system-turn block that tells the model how to call
    render_tool_call(name, args) an earlier call, fed back in the conversation as the model wrote it
    parse_tool_calls(text)       a finished reply -> (content, calls)
    ToolCallStream               the same, incrementally: content is emitted until a call begins
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict                # a JSON schema for the arguments object


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str                  # JSON text, as OpenAI's `function.arguments`


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tools_prompt(specs: list[ToolSpec]) -> str:
    signatures = "\n".join(_canonical({"type": "function", "function": {
        "name": s.name, "description": s.description, "parameters": s.parameters}}) for s in specs)
    return ("# Tools\nYou may call one or more functions to assist with the user query.\n"
            f"Function signatures:\n<tools>\n{signatures}\n</tools>\n"
            "To call a function, reply with a JSON object with its name and arguments within "
            f"{OPEN}{CLOSE} tags:\n{OPEN}\n" + '{"name": <function-name>, "arguments": <args-json-object>}'
            + f"\n{CLOSE}")


def render_tool_call(name: str, arguments: str) -> str:
    """An earlier call in the format the grammar makes the model write (so a replay reads the same)."""
    try:
        args = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        args = arguments            # sent back as the client has it; the model sees what it wrote
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{CLOSE}"


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split a reply into its content and its well-formed calls; a malformed block stays content."""
    content, calls, rest = [], [], text
    while (start := rest.find(OPEN)) >= 0:
        end = rest.find(CLOSE, start)
        body = rest[start + len(OPEN): end if end >= 0 else len(rest)]
        call = _parse_call(body)
        if call is None:
            content.append(rest[: end + len(CLOSE)] if end >= 0 else rest)
        else:
            content.append(rest[:start])
            calls.append(call)
        rest = rest[end + len(CLOSE):] if end >= 0 else ""
    content.append(rest)
    joined = "".join(content)
    return (joined.strip() if calls else joined), calls


def _parse_call(body: str) -> ToolCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), value["name"], json.dumps(arguments, ensure_ascii=False))


class ToolCallStream:
    """Streams content until a call may begin; the rest is parsed once the reply is complete.

        "Let me check.<tool_call>{...}</tool_call>"
         |--- emitted ---|---- held, parsed by finish() ----|
    """

    def __init__(self) -> None:
        self.text = ""
        self.emitted = 0
        self.holding = False

    def add(self, delta: str) -> str:
        self.text += delta
        if self.holding:
            return ""
        at = self.text.find(OPEN)
        if at >= 0:
            self.holding = True
            return self._emit(len(self.text[:at].rstrip()))
        # Trailing blank space waits too: before a call it is dropped, as parse_tool_calls drops it.
        upto = len(self.text) - _partial_suffix(self.text, OPEN)
        return self._emit(len(self.text[:upto].rstrip()))

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content not yet emitted, and the calls."""
        content, calls = parse_tool_calls(self.text[self.emitted:])
        if calls:
            content = content.strip()
        return content, calls

    def _emit(self, upto: int) -> str:
        chunk = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return chunk


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
