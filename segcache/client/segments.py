"""Segments as a client holds them, and how they look inside a single system turn.

A segment is a block of prompt text identified by the SHA-256 of its bytes. The server keys its
cache tree on that hash, so the client computes it once, when the segment is made, and from then
on may send the hash alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

# The canonical separator between segments and before the system message that follows them.
# It is the server's: a client rendering segments inline must produce the same bytes.
SEPARATOR = "\n\n"


def segment_hash(content: str) -> str:
    """'sha256:<hex>' of the UTF-8 bytes of content: the hash the server checks."""
    return "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Segment:
    """One prompt block. `id` is a label echoed in receipts; the hash is computed once here."""

    content: str
    id: str | None = None
    ttl_seconds: float | None = None
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", segment_hash(self.content))

    def payload(self, with_content: bool) -> dict[str, Any]:
        """The request's `segments[]` entry: hash always, content only when asked."""
        entry: dict[str, Any] = {"hash": self.hash}
        if self.id is not None:
            entry["id"] = self.id
        if with_content:
            entry["content"] = self.content
        if self.ttl_seconds is not None:
            entry["ttl_seconds"] = self.ttl_seconds
        return entry


def inline_messages(segments: Sequence[Segment], messages: Iterable[Mapping[str, Any]],
                    separator: str = SEPARATOR) -> list[dict[str, Any]]:
    """Messages for a server that does not speak segments: the segments become the system turn.

    segcache renders segments inside the single system turn, joined by the separator and followed
    by the first system message of `messages` if there is one. Doing the same here keeps the
    prompt byte-identical, so switching servers changes nothing the model sees.
    """
    messages = [dict(m) for m in messages]
    if not segments:
        return messages
    system_text = separator.join(s.content for s in segments)
    if messages and messages[0].get("role") == "system":
        first = messages.pop(0)
        system_text += separator + message_text(first.get("content"))
    return [{"role": "system", "content": system_text}, *messages]


def message_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content list joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
