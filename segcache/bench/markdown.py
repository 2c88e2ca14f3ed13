"""Rewrites one `## ` section of BENCHMARKS.md and leaves every other section as it was."""

from __future__ import annotations

import re
from pathlib import Path

_TITLE = "# Benchmarks\n"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Put `## heading` + body in place of the section of that name, or append it; create the file if absent.
    A path of '-' writes nothing: every bench's `--markdown -` means "print only"."""
    if str(path) == "-":
        return
    text = path.read_text(encoding="utf-8") if path.exists() else _TITLE
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def write_section(path: Path | None, heading: str, body: str) -> None:
    """A bench's `--markdown PATH`: rewrite the section and say so; nothing for no path or '-'."""
    if path is None or str(path) == "-":
        return
    replace_section(path, heading, body)
    print(f"updated the '## {heading}' section of {path}")
