"""Fixtures for the trace tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """Write records as a JSONL trace file and return its path."""
    def write(records: list[dict], name: str = "trace.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
        return path
    return write


@pytest.fixture(scope="session")
def served_tokenizer(model_dir):
    """The default model's tokenizer, as `segcache analyze` loads it."""
    from segcache.trace.tokens import load_tokenizer

    return load_tokenizer("default")
