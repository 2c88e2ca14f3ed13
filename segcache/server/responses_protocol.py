"""OpenAI Responses requests at the HTTP edge (the stateless subset), and how they map onto our tree.

    instructions, then the leading system/developer items of `input`
        -> segments, in that order, all in the one system turn
    the other items (user, assistant, later system/developer)
        -> messages, each its own part

So agents that share `instructions` (and a shared developer block after it) share those parts
with each other and with chat requests that send the same blocks as `segments`; the rendered text
is what one system message holding the blocks (joined by a blank line) would render.
Function tools, function_call and function_call_output items: see responses_tools.py (the tools
block is one more segment after these, as on chat completions). `previous_response_id`, other tool
types and every other field that would change the reply are refused with a 400
`unsupported_parameter`; fields that change nothing (metadata, store, user, ...) are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from segcache.cache.keys import segment_hash
from segcache.engine.prompt import SegmentText
from segcache.engine.request import SamplingParams, SegmentInput
from segcache.engine.tools import tools_prompt
from segcache.server.errors import ApiError
from segcache.server.responses_tools import FunctionTools, add_tool_item
from segcache.server.protocol import Text

HARMLESS_FIELDS = frozenset({"metadata", "user", "store", "service_tier", "safety_identifier", "stream_options",
                             "max_tool_calls"})
# Fields accepted only with the value that means "as if absent".
NEUTRAL_VALUES: dict[str, tuple] = {
    "include": ([],), "truncation": ("disabled",),
    "text": ({"format": {"type": "text"}},), "background": (False,), "reasoning": ({},)}
_REFUSALS = {
    "previous_response_id": "this server keeps no responses (stateless): send the whole conversation in `input`",
    "conversation": "this server keeps no conversations (stateless): send the whole conversation in `input`",
}
_ITEM_KEYS = frozenset({"type", "role", "content", "id", "status"})
_PART_KEYS = frozenset({"type", "text", "annotations", "logprobs"})
_ROLES = ("user", "assistant", "system", "developer")
_TEXT = TypeAdapter(Text)     # item texts get the checks a chat message's text gets


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: Text | list[dict]
    instructions: Text | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def refuse_unsupported(self) -> None:
        for name, value in sorted((self.model_extra or {}).items()):
            if name in HARMLESS_FIELDS or value is None or value in NEUTRAL_VALUES.get(name, ()):
                continue
            message = _REFUSALS.get(name, f"`{name}` is not supported by this server; leave it out")
            raise ApiError(400, message, "unsupported_parameter", name)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_output_tokens or default_max_tokens,
                              temperature=self.temperature, top_p=self.top_p)

    def function_tools(self) -> FunctionTools:
        return FunctionTools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def prompt(self, tools: FunctionTools) -> ResponsesPrompt:
        messages = _messages(self.input)
        system = [("instructions", self.instructions)] if self.instructions else []
        while messages and messages[0][1]["role"] in ("system", "developer"):
            index, message = messages.pop(0)
            system.append((f"input[{index}]", message["content"]))
        if tools.tools:    # the chat path's tools block, after the system blocks as there
            system.append(("tools", tools_prompt([t.spec() for t in tools.chat_tools])))
        segments = tuple(SegmentInput(SegmentText(text, label, segment_hash(text))) for label, text in system if text)
        return ResponsesPrompt(segments, tuple(m for _, m in messages))


@dataclass(frozen=True)
class ResponsesPrompt:
    segments: tuple[SegmentInput, ...]
    messages: tuple[dict, ...]


def _messages(input_: str | list[dict]) -> list[tuple[int, dict]]:
    if isinstance(input_, str):
        return [(0, {"role": "user", "content": input_})]
    messages: list[tuple[int, dict]] = []
    for i, item in enumerate(input_):
        if isinstance(item, dict) and item.get("type") in ("function_call", "function_call_output"):
            add_tool_item(messages, item, i)
        else:
            messages.append((i, _message(item, f"input[{i}]")))
    return messages


def _message(item: dict, param: str) -> dict:
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind != "message":
        raise ApiError(400, f"{param}: items of type {kind!r} are not supported (this server is stateless and runs "
                       "function tools only); send message, function_call and function_call_output items",
                       "unsupported_parameter", param)
    if item.get("role") not in _ROLES:
        raise ApiError(400, f"{param}.role must be one of {', '.join(_ROLES)}", "invalid_request", f"{param}.role")
    _only(item, _ITEM_KEYS, param)
    role = "system" if item["role"] == "developer" else item["role"]   # developer: OpenAI's newer name
    return {"role": role, "content": _text(item.get("content"), f"{param}.content")}


def _text(content, param: str) -> str:
    if isinstance(content, str):
        return _valid(content, param)
    if not isinstance(content, list):
        raise ApiError(400, f"{param} must be a string or a list of text parts", "invalid_request", param)
    texts = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ApiError(400, f"{where}: parts of type {kind!r} are not supported; send input_text parts",
                           "unsupported_parameter", where)
        _only(part, _PART_KEYS, where)
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.text must be a string", "invalid_request", f"{where}.text")
        texts.append(_valid(part["text"], f"{where}.text"))
    return "".join(texts)


def _valid(text: str, param: str) -> str:
    try:
        return _TEXT.validate_python(text)
    except ValidationError as exc:
        raise ApiError(400, f"{param}: {exc.errors()[0]['msg']}", "invalid_request", param) from None


def _only(value: dict, allowed: frozenset, param: str) -> None:
    for key in sorted(set(value) - allowed):
        raise ApiError(400, f"{param}.{key} is not supported; leave it out", "unsupported_parameter", f"{param}.{key}")
