"""Constraints on a reply, as grammars: a JSON schema, or a call of one of the given tools.

A `Grammar` is plain text (an llguidance Lark grammar) built here without the grammar engine, so
requests stay torch- and library-free; engine/constraint.py compiles it against the tokenizer.
JSON is written in one fixed style (", " and ": ", no other whitespace): a small model cannot loop
on blank space, and a tool call reads exactly like the calls rendered back into the conversation.
Objects that list their properties get no others unless the schema asks for them: still valid for
the schema, and a small model cannot wander off into keys nobody reads until max_tokens cuts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from segcache.engine.tools import CLOSE, OPEN, ToolSpec

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    lark: str
    param: str                      # the request field it comes from, named in errors


def json_grammar(schema: dict | None, param: str) -> Grammar:
    """Any JSON object (json_object), or one that validates against `schema` (json_schema)."""
    return Grammar("start: %json " + _styled(schema if schema is not None else {"type": "object"}), param)


def tool_call_grammar(specs: list[ToolSpec], param: str) -> Grammar:
    """Exactly one call of one of `specs`, with arguments valid for that tool's schema."""
    calls = [{"type": "object", "properties": {"name": {"const": s.name}, "arguments": s.parameters or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for s in specs]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return Grammar(f"start: {json.dumps(OPEN + chr(10))} call {json.dumps(chr(10) + CLOSE)}\n"
                   f"call: %json {_styled(schema)}", param)


def _styled(schema: dict) -> str:
    return json.dumps({**_closed(schema), "x-guidance": JSON_STYLE})


def _closed(schema):
    """The schema with `additionalProperties: false` wherever an object lists properties and says nothing."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) if key not in ("const", "enum", "default", "examples") else value
              for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        closed["additionalProperties"] = False
    return closed
