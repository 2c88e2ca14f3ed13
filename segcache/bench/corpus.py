"""Realistic, offline text for benchmark blocks, drawn from the Python standard library.

Benchmarks need prompts that tokenize like real ones (prose, code, JSON), not random ids, and that
are identical on every run: the library's own docstrings and source are both, and need no network.
Every generator walks a fixed module list in a fixed order; members come sorted by name.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Iterator

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # default values like <object object at 0x7f...>


def tool_schemas(module_names: tuple[str, ...]) -> Iterator[str]:
    """One OpenAI-style function schema (compact JSON) per public function of each module."""
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name, member in inspect.getmembers(module, _is_function):
            if not name.startswith("_"):
                yield json.dumps(_schema(f"{module_name}.{name}", member), sort_keys=True)


def reference_docs(module_names: tuple[str, ...]) -> Iterator[str]:
    """The module docstring, then one entry per public function or class: signature and docstring."""
    for module_name in module_names:
        module = importlib.import_module(module_name)
        yield f"## {module_name}\n{inspect.getdoc(module) or ''}"
        for name, member in inspect.getmembers(module):
            if name.startswith("_") or not (_is_function(member) or inspect.isclass(member)):
                continue
            doc = inspect.getdoc(member)
            if doc:
                yield f"### {module_name}.{name}{_signature(member)}\n{doc}"


def source_files(module_names: tuple[str, ...]) -> Iterator[str]:
    """Each module's source as a fenced file, the way an agent shows it the file it works on."""
    for module_name in module_names:
        module = importlib.import_module(module_name)
        path = module_name.replace(".", "/") + ".py"
        yield f"Current file: {path}\n```python\n{inspect.getsource(module)}```"


def _is_function(member: object) -> bool:
    return inspect.isfunction(member) or inspect.isbuiltin(member)


def _signature(member: object) -> str:
    try:
        return _ADDRESS.sub("", str(inspect.signature(member)))
    except (TypeError, ValueError):  # some builtins and classes carry no signature
        return "(...)"


def _schema(name: str, function: object) -> dict:
    properties, required = {}, []
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        parameters = []
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        entry = {"type": "string"}
        if parameter.default is parameter.empty:
            required.append(parameter.name)
        else:
            entry["description"] = "default: " + _ADDRESS.sub("", repr(parameter.default))
        properties[parameter.name] = entry
    description = (inspect.getdoc(function) or name).split("\n\n")[0]
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}
