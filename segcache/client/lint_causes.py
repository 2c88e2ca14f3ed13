"""Why two prompts part ways: classify the first differing character.

The checks run from structural to textual, and the first that applies names the cause:

    tool_schema / order   the divergence is inside the tool definitions
    system_message        it is at a system message that is not the prompt's first message
    whitespace            the texts agree again once whitespace and separator marks are ignored
    order                 the following lines (or list items) are the same ones, reordered
    time, date, path      a time, date or file path spans the divergence, in either prompt
    other                 none of these
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Mapping, Sequence

from segcache.client.layout import tool_name
from segcache.client.lint_logs import LoggedPrompt

CAUSES = ("date", "time", "path", "order", "whitespace", "tool_schema", "system_message", "other")

_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
          r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?")
_WEEKDAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
# Times before dates: in '2024-05-01T10:31' a divergence in the time part is a time.
_PATTERNS = tuple((cause, re.compile(pattern)) for cause, pattern in (
    ("time", r"(?<!\d)\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[AaPp][Mm])?(?:Z|[+-]\d{2}:?\d{2})?"),
    ("time", r"(?<!\d)1\d{9}(?:\d{3})?(?!\d)"),  # Unix timestamps, seconds or milliseconds
    ("date", r"(?<!\d)\d{4}-\d{1,2}-\d{1,2}(?!\d)"),
    ("date", r"(?<!\d)\d{1,2}[/.]\d{1,2}[/.]\d{2,4}(?!\d)"),
    ("date", rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?(?:\s+\d{{4}})?\b"),
    ("date", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:\s+\d{{4}})?\b"),
    ("date", rf"\b{_WEEKDAY}\b"),
    ("path", r"(?<![\w:/])(?:~|[A-Za-z]:)?(?:[/\\][\w.@+\-]+){2,}[/\\]?"),
))
_SEPARATOR_MARKS = re.compile(r"[\s\-=*#_~|]+")
_LIST_SPLIT = re.compile(r"\s*[,;|]\s*")
_LOOKAHEAD_CHARS = 2000
_MAX_LINES = 400


def classify(earlier: LoggedPrompt, current: LoggedPrompt, offset: int) -> str:
    """The cause of the first difference, at character `offset` of both prompts' texts."""
    regions = (earlier.region_at(offset), current.region_at(offset))
    if any(r is not None and r.kind == "tools" for r in regions):
        return "order" if _same_tools(earlier.tools, current.tools) else "tool_schema"
    if any(r is not None and r.extra_system for r in regions):
        return "system_message"
    a, b = earlier.text, current.text
    if _same_but_whitespace(a, b, offset):
        return "whitespace"
    if _reordered(a, b, offset):
        return "order"
    for cause, pattern in _PATTERNS:
        if _spans(pattern, a, offset) or _spans(pattern, b, offset):
            return cause
    return "other"


def _same_tools(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    def canonical(tools: Sequence[Mapping[str, Any]]) -> list[str]:
        return [json.dumps(t, sort_keys=True) for t in sorted(tools, key=tool_name)]
    return bool(a) and canonical(a) == canonical(b)


def _same_but_whitespace(a: str, b: str, offset: int) -> bool:
    """Whitespace and separator marks ('---', '###') differ, and the text after them agrees."""
    rest_a = _SEPARATOR_MARKS.sub("", a[offset:offset + _LOOKAHEAD_CHARS])
    rest_b = _SEPARATOR_MARKS.sub("", b[offset:offset + _LOOKAHEAD_CHARS])
    span = min(len(rest_a), len(rest_b), 64)
    return span > 0 and rest_a[:span] == rest_b[:span]


def _reordered(a: str, b: str, offset: int) -> bool:
    """The lines from the divergence on, or the items of its line, are a permutation of each other."""
    line_start = a.rfind("\n", 0, offset) + 1
    lines_a = a[line_start:line_start + 100 * _LOOKAHEAD_CHARS].split("\n")[:_MAX_LINES]
    lines_b = b[line_start:line_start + 100 * _LOOKAHEAD_CHARS].split("\n")[:_MAX_LINES]
    if _permuted_prefix(lines_a, lines_b):
        return True
    item_start = max(a.rfind(mark, line_start, offset) for mark in ":,;|([{") + 1
    item_start = max(item_start, line_start)
    return _permuted_prefix(_items(lines_a[0], item_start - line_start), _items(lines_b[0], item_start - line_start))


def _items(line: str, start: int) -> list[str]:
    return [item.strip(" .[]{}()'\"") for item in _LIST_SPLIT.split(line[start:])]


def _permuted_prefix(a: Sequence[str], b: Sequence[str]) -> bool:
    """Some first k >= 2 entries of a and b hold the same multiset, in a different order."""
    balance: Counter[str] = Counter()
    for k in range(min(len(a), len(b))):
        balance[a[k]] += 1
        balance[b[k]] -= 1
        for key in (a[k], b[k]):
            if balance[key] == 0:
                del balance[key]
        if k >= 1 and not balance and list(a[:k + 1]) != list(b[:k + 1]):
            return True
    return False


def _spans(pattern: re.Pattern[str], text: str, offset: int) -> bool:
    """A match of pattern on the line around offset covers the character at offset."""
    start = max(text.rfind("\n", 0, offset) + 1, offset - 300)
    end = text.find("\n", offset)
    end = min(len(text) if end < 0 else end, offset + 300)
    return any(m.start() <= offset < m.end() for m in pattern.finditer(text, start, end))
