"""PromptLayout: declare prompt blocks by how often they change; get cache-stable segments.

A prefix cache reuses a prompt only up to its first changed byte, so the order of blocks decides
what a new session can reuse. The layout puts them stable-first:

    global rules, tools   | agent skills, memory | task, query       | env: cwd, date, git
    ----------------------+----------------------+-------------------+-------------------
    GLOBAL                | AGENT                | TASK              | VOLATILE (the tail)

and removes the small sources of drift that break a prefix without anyone noticing: collections
enumerated in whatever order a dict or a directory listing gave, separators and trailing blank
lines that differ between code paths, a date read again at midnight.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from segcache.client.segments import SEPARATOR, Segment


class Stability(enum.IntEnum):
    """How often a block changes; the layout emits lower values first."""

    GLOBAL = 0    # system rules, tool schemas, output format: rarely
    AGENT = 1     # an agent's skills, project memory: occasionally
    TASK = 2      # current file, user query, scratchpad: every task
    VOLATILE = 3  # working directory, git status, date, model id: every session


@dataclass(frozen=True)
class Block:
    id: str
    content: str
    stability: Stability


class PromptLayout:
    """Collects blocks in any order and emits them as segments in a cache-stable order.

    Blocks of equal stability keep the order in which they were added, so a caller who adds them
    deterministically gets deterministic output. The session date is read once, when the layout is
    made (or given), so a session that crosses midnight keeps its prefix.
    """

    def __init__(self, session_date: dt.date | None = None, separator: str = SEPARATOR) -> None:
        self.session_date = session_date or dt.date.today()
        self.separator = separator
        self._blocks: list[Block] = []
        self._tools: list[dict[str, Any]] = []

    def add(self, block_id: str, content: str, stability: Stability | str = Stability.GLOBAL) -> PromptLayout:
        """Add a block; its text is canonicalised so the seam with the next block never varies."""
        if any(b.id == block_id for b in self._blocks):
            raise ValueError(f"block id {block_id!r} is already in this layout: give each block its own id")
        self._blocks.append(Block(block_id, canonical_text(content), _stability(stability)))
        return self

    def add_collection(self, block_id: str, items: Mapping[str, str] | Iterable[tuple[str, str]],
                       stability: Stability | str = Stability.GLOBAL, title: str | None = None) -> PromptLayout:
        """Add named items (skills, instruction files) as one block, sorted by name."""
        pairs = sorted(dict(items).items())
        entries = [f"## {name}\n{canonical_text(text)}" for name, text in pairs]
        body = self.separator.join(([f"# {title}"] if title else []) + entries)
        return self.add(block_id, body, stability)

    def set_tools(self, tools: Iterable[Mapping[str, Any]]) -> PromptLayout:
        """The request's tool definitions, kept sorted by name: see `tools()`."""
        self._tools = sorted((dict(t) for t in tools), key=tool_name)
        return self

    def add_env(self, block_id: str = "env", **facts: Any) -> PromptLayout:
        """The environment block (cwd, platform, git status, model...), always at the volatile tail.

        It carries the session date, frozen at the layout's creation.
        """
        lines = [f"{key.replace('_', ' ')}: {value}" for key, value in facts.items()]
        lines.append(f"date: {self.session_date.isoformat()}")
        return self.add(block_id, "\n".join(lines), Stability.VOLATILE)

    def blocks(self) -> list[Block]:
        """Blocks stable-first; a stable sort keeps insertion order within a stability."""
        return sorted(self._blocks, key=lambda b: b.stability)

    def segments(self) -> list[Segment]:
        return [Segment(b.content, id=b.id) for b in self.blocks()]

    def tools(self) -> list[dict[str, Any]]:
        """Tool definitions sorted by name, each with its keys in a canonical order."""
        return [json.loads(json.dumps(t, sort_keys=True)) for t in self._tools]

    def system_text(self) -> str:
        """The single system turn the server renders from these segments."""
        return self.separator.join(b.content for b in self.blocks())


def canonical_text(text: str) -> str:
    """Unix newlines, no trailing spaces on lines, no blank lines at either end.

    Blocks are joined by one fixed separator; a block that ends with its own blank line (or '\\r\\n'
    on one machine only) would change the bytes at the seam.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def tool_name(tool: Mapping[str, Any]) -> str:
    """An OpenAI tool's name (`{"type": "function", "function": {"name": ...}}`) or its 'name'."""
    function = tool.get("function")
    if isinstance(function, Mapping) and "name" in function:
        return str(function["name"])
    return str(tool.get("name", ""))


def _stability(value: Stability | str) -> Stability:
    if isinstance(value, Stability):
        return value
    try:
        return Stability[value.upper()]
    except KeyError:
        names = ", ".join(s.name.lower() for s in Stability)
        raise ValueError(f"unknown stability {value!r}: use one of {names}") from None
