"""ChatML: render chat messages into parts, and cut a rendered ChatML string back into parts.

    <|im_start|>system\\n...<|im_end|>\\n | <|im_start|>user\\n...<|im_end|>\\n | <|im_start|>assistant\\n
    message (system)                   message (user)                     generation

The default model speaks ChatML; traces from other models' templates that are not ChatML are analysed
as one `prompt` part per request (the prefix and substring metrics do not need parts).
"""

from __future__ import annotations

import json
import re

from segcache.trace.records import Part

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
_HEADER = re.compile(r"<\|im_start\|>([^\n]*)\n")


def render_message(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_parts(messages: list[dict], add_generation_prompt: bool = True) -> tuple[Part, ...]:
    """One part per message (roles and contents as given), then the generation prompt."""
    parts = [Part("message", m["role"], render_message(m["role"], m["content"])) for m in messages]
    if add_generation_prompt:
        parts.append(Part("generation", "assistant", f"{IM_START}assistant\n"))
    return tuple(parts)


def parse_parts(text: str) -> tuple[Part, ...]:
    """Cut a rendered prompt at each <|im_start|>; text that is not ChatML becomes one `prompt` part.

    Text before the first turn is a `head`; a last turn without <|im_end|> is the `generation` prompt.
    """
    starts = [m.start() for m in re.finditer(re.escape(IM_START), text)]
    if not starts:
        return (Part("prompt", None, text),) if text else ()
    parts = [Part("head", None, text[: starts[0]])] if starts[0] else []
    for begin, end in zip(starts, starts[1:] + [len(text)]):
        block = text[begin:end]
        header = _HEADER.match(block)
        role = header.group(1) if header else None
        kind = "message" if IM_END in block else "generation"
        parts.append(Part(kind, role, block))
    return tuple(parts)


def message_of(part: Part) -> dict | None:
    """{role, content} if the part is exactly one rendered ChatML message, else None."""
    header = _HEADER.match(part.text)
    if part.kind != "message" or header is None:
        return None
    content = part.text[header.end():]
    if not content.endswith(IM_END + "\n"):
        return None
    content = content[: -len(IM_END) - 1]
    return {"role": header.group(1), "content": content} if IM_END not in content else None


def flatten_message(message: dict) -> dict:
    """An OpenAI chat message as {role, content: str}: text parts joined, tool calls written out.

    Tool calls are rendered the Hermes way (<tool_call>{json}</tool_call>) so that they count as
    tokens the way most ChatML templates send them.
    """
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(_content_piece(piece) for piece in content)
    text = content or ""
    for call in message.get("tool_calls") or ():
        function = call.get("function", call)
        body = {"name": function.get("name"), "arguments": function.get("arguments")}
        text += f"\n<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"
    return {"role": str(message.get("role", "user")), "content": text}


def with_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Put a request's tool schemas into its system message, in the order given (order matters to a cache)."""
    if not tools:
        return messages
    block = "# Tools\n\n" + "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": messages[0]["content"] + "\n\n" + block}
        return [first] + messages[1:]
    return [{"role": "system", "content": block}] + messages


def _content_piece(piece) -> str:
    if isinstance(piece, str):
        return piece
    if isinstance(piece, dict) and piece.get("type") in ("text", "input_text", "output_text"):
        return str(piece.get("text", ""))
    kind = piece.get("type", "content") if isinstance(piece, dict) else "content"
    return f"[{kind}]"
