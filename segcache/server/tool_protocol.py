"""Request shapes for acting and structured output: tools, tool_choice, response_format (OpenAI's).

Kept apart from protocol.py so that file stays about segments and generation; both are the HTTP edge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from segcache.engine.grammar import Grammar, json_grammar, tool_call_grammar
from segcache.engine.tools import ToolSpec


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None                 # always honoured when the call is forced; see docs/clients.md


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef

    def spec(self) -> ToolSpec:
        return ToolSpec(self.function.name, self.function.description,
                        self.function.parameters or {"type": "object", "properties": {}})


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def reply_grammar(tools: list[Tool] | None, tool_choice: ToolChoice | None,
                  response_format: ResponseFormat | None) -> Grammar | None:
    """The constraint on the reply: a forced tool call wins over a response format; `auto` constrains nothing.

    Raises ValueError (with the field name first) for a choice that names no given tool.
    """
    if tool_choice == "required" and not tools:
        raise ValueError("tool_choice \"required\" needs `tools` to choose from; send tools or drop tool_choice")
    if tool_choice == "required":
        return tool_call_grammar([t.spec() for t in tools], "tool_choice")
    if isinstance(tool_choice, NamedToolChoice):
        named = [t.spec() for t in tools or [] if t.function.name == tool_choice.function.name]
        if not named:
            raise ValueError(f"tool_choice names the function {tool_choice.function.name!r}, which is not in `tools`")
        return tool_call_grammar(named, "tool_choice")
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return json_grammar(None, "response_format")
    if response_format.json_schema is None:
        raise ValueError("response_format of type json_schema needs a `json_schema` object with a `schema`")
    return json_grammar(response_format.json_schema.schema_ or {}, "response_format.json_schema.schema")


def parses_tool_calls(tools: list[Tool] | None, tool_choice: ToolChoice | None) -> bool:
    """Whether the reply is read for calls: there are tools and the choice does not forbid them."""
    return bool(tools) and tool_choice != "none"
