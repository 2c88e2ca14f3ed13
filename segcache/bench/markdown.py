"""Rewrites one `## ` section of BENCHMARKS.md and leaves every other section as it was. Each section it writes
starts with the machine and the code that produced it (`run_on`): the kernels that serve, and so the figures,
depend on the CPU (AMX, AVX512-BF16, AVX512-VNNI)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_TITLE = "# Benchmarks\n"
_FEATURES = (("amx_int8", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512_vnni", "AVX512-VNNI"))


def run_on() -> str:
    """One line: the CPU, its core count and the features that choose our kernels, and the code's commit."""
    model, flags = "an unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "an unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    features = [name for flag, name in _FEATURES if flag in flags]
    missing = "" if "amx_int8" in flags else "; no AMX"
    return (f"Run on: {model}, {os.cpu_count()} cores ({', '.join(features) or 'none of AVX512-BF16, AVX512-VNNI'}"
            f"{missing}); segcache {code_version()}.")


def code_version() -> str:
    """The checkout's commit, so a figure can be traced to the engine that produced it."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "segcache"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(not a git checkout)"
    return f"at {commit}" + (" with uncommitted changes" if dirty else "")


def replace_section(path: Path, heading: str, body: str) -> None:
    """Put `## heading` + body in place of the section of that name, or append it; create the file if absent.
    A path of '-' writes nothing: every bench's `--markdown -` means "print only"."""
    if str(path) == "-":
        return
    text = path.read_text(encoding="utf-8") if path.exists() else _TITLE
    section = f"## {heading}\n\n{run_on()}\n\n{body.strip()}\n"
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
