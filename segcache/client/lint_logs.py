"""Request logs as rendered prompts with regions, for `segcache lint`.

Two record shapes are read, one JSON object per line:
- segcache's trace file: `{"input": <rendered prompt>, "parts": [{"kind", "role", "text", ...}],
  "messages", "segments", ...}`; the parts give the regions.
- OpenAI chat requests: `{"messages": [...], "tools"?: [...], "segments"?: [...], "model"?}`,
  optionally wrapped as `{"request": {...}, "response": {...}}`. They are rendered here the way
  segcache renders them (ChatML, segments inside the one system turn), with the tool definitions
  first, where hosted APIs put them. A hash-only segment takes the content an earlier line of the
  log sent under that hash, as the server would.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from segcache.client.segments import Segment, inline_messages, message_text


@dataclass(frozen=True)
class Region:
    """A span of the rendered prompt and what produced it."""

    start: int
    end: int
    kind: str                   # "tools" | "segment" | "message" | "template"
    role: str | None = None
    extra_system: bool = False  # a system message after the prompt's first message


@dataclass(frozen=True)
class LoggedPrompt:
    number: int                 # 1-based position among the log's requests
    text: str
    regions: tuple[Region, ...] = ()
    tools: tuple[Mapping[str, Any], ...] = ()
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(r.start for r in self.regions))

    def region_at(self, offset: int) -> Region | None:
        """The region holding the character at offset (the last region for offset == len(text))."""
        index = bisect_right(self._starts, offset) - 1
        return self.regions[index] if index >= 0 else None


class LogFormatError(ValueError):
    pass


def read_log(path: str | Path) -> list[LoggedPrompt]:
    """Every request in the log, in order; lines that hold no prompt (e.g. other endpoints) are skipped."""
    prompts: list[LoggedPrompt] = []
    segment_texts: dict[str, str] = {}  # hash -> content, from earlier requests of the log
    for line_number, record in _records(Path(path)):
        if "request" in record and isinstance(record["request"], Mapping):
            record = record["request"]
        if isinstance(record.get("input"), str):
            prompts.append(from_trace(len(prompts) + 1, record))
        elif isinstance(record.get("messages"), list):
            prompts.append(from_chat_request(len(prompts) + 1, record, segment_texts))
        elif not {"endpoint", "time"} & record.keys():
            raise LogFormatError(f"{path}:{line_number}: neither a segcache trace record (with 'input') nor a "
                                 "chat request (with 'messages')")
    return prompts


def from_trace(number: int, record: Mapping[str, Any]) -> LoggedPrompt:
    """A segcache trace record; its parts become regions when they spell the input exactly."""
    text = record["input"]
    parts = record.get("parts") or []
    if "".join(p.get("text", "") for p in parts) != text:
        return LoggedPrompt(number, text, (Region(0, len(text), "template"),), tuple(record.get("tools") or ()))
    regions, offset, seen_message = [], 0, False
    for part in parts:
        kind, role = str(part.get("kind", "template")), part.get("role")
        end = offset + len(part.get("text", ""))
        is_message = kind == "message"
        regions.append(Region(offset, end, kind, role, extra_system=is_message and role == "system" and seen_message))
        seen_message |= is_message
        offset = end
    return LoggedPrompt(number, text, tuple(r for r in regions if r.end > r.start), tuple(record.get("tools") or ()))


def from_chat_request(number: int, request: Mapping[str, Any], segment_texts: dict[str, str]) -> LoggedPrompt:
    """Render a chat request as ChatML: tools first, then the messages with segments in the system turn.

    `segment_texts` (hash -> content) resolves hash-only segments and learns the ones sent with content;
    a hash never seen with content renders as the hash itself.
    """
    tools = tuple(request.get("tools") or ())
    segments = [_segment(s, segment_texts) for s in request.get("segments") or ()]
    pieces: list[tuple[str, Region]] = []
    if tools:
        pieces.append((f"<tools>\n{json.dumps(list(tools))}\n</tools>\n", Region(0, 0, "tools")))
    for index, message in enumerate(inline_messages(segments, request["messages"])):
        role = str(message.get("role"))
        pieces.append((render_message(message), Region(0, 0, "message", role, role == "system" and index > 0)))
    pieces.append(("<|im_start|>assistant\n", Region(0, 0, "template")))
    return _assemble(number, pieces, tools)


def _segment(entry: Mapping[str, Any], segment_texts: dict[str, str]) -> Segment:
    if "content" in entry:
        segment = Segment(entry["content"], id=entry.get("id"))
        segment_texts[segment.hash] = segment.content
        return segment
    reference = str(entry.get("hash") or entry.get("name"))
    return Segment(segment_texts.get(reference, f"<segment {reference}>"), id=entry.get("id"))


def render_message(message: Mapping[str, Any]) -> str:
    body = message_text(message.get("content"))
    for call in message.get("tool_calls") or ():
        body += "\n<tool_call>\n" + json.dumps(call.get("function", call), sort_keys=True) + "\n</tool_call>"
    return f"<|im_start|>{message.get('role')}\n{body}<|im_end|>\n"


def _assemble(number: int, pieces: Sequence[tuple[str, Region]], tools: tuple[Mapping[str, Any], ...]) -> LoggedPrompt:
    regions, offset = [], 0
    for text, region in pieces:
        regions.append(Region(offset, offset + len(text), region.kind, region.role, region.extra_system))
        offset += len(text)
    return LoggedPrompt(number, "".join(text for text, _ in pieces), tuple(regions), tools)


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LogFormatError(f"{path}:{line_number}: not JSON ({error.msg}); lint reads one JSON "
                                     "object per line") from None
            if not isinstance(record, Mapping):
                raise LogFormatError(f"{path}:{line_number}: expected a JSON object per line")
            yield line_number, record
