"""The committed opencode trace replayed through a real server: per request, the cached tokens its blocks predict.

examples/traces/opencode-two-dirs.jsonl is opencode run in two directories: a title request and the main
request each. The second main request's system message differs from the first's only in its
working-directory line near the end, so it reuses its tools and every system-message block before that line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from segcache.cli import main
from segcache.trace.readers import read_trace
from segcache.trace.tokens import load_transformers_tokenizer

TRACE = Path(__file__).resolve().parents[2] / "examples" / "traces" / "opencode-two-dirs.jsonl"
TITLE_A, MAIN_A, TITLE_B, MAIN_B = range(4)


@pytest.fixture(scope="module")
def tiny_8k(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with an 8,192-token context (opencode's main requests hold ~7,500 tokens)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-8k"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    return folder


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in TRACE.read_text().splitlines()]


def expected_cached(records: list[dict], tokenizer, block_tokens: int) -> list[int]:
    """From the recorded parts and their tokens alone: what each request should read from the cache.

    Replay sends a leading system message as a segment, so every request starts with the same head
    part, `<|im_start|>system\n` (3 tokens), which the first main request finds cached."""
    parts = [record["parts"] for record in records]
    head = parts[MAIN_A][0]["tokens"]
    # The title requests share their system message and first user message (their parts 0 and 1); the
    # quoted user prompt differs. Those parts are below one block each or split the same way, so all match.
    title = sum(p["tokens"] for p in parts[TITLE_A][:2])
    # The main requests: head, tools segment, system message, ... The system message blocks match up to
    # the block in which the first differing token lies.
    head_and_tools = sum(p["tokens"] for p in parts[MAIN_B][:2])
    first_change = first_difference(tokenizer, records[MAIN_A]["input"], records[MAIN_B]["input"]) - head_and_tools
    assert 0 < first_change < parts[MAIN_B][2]["tokens"]   # inside the system message
    return [0, head, title, head_and_tools + first_change // block_tokens * block_tokens]


def first_difference(tokenizer, left: str, right: str) -> int:
    left_ids, right_ids = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in (left, right))
    return next(i for i, (a, b) in enumerate(zip(left_ids, right_ids)) if a != b)


def test_the_trace_is_opencode_from_two_directories(records):
    assert [r["endpoint"] for r in records] == ["chat.completions"] * 4
    assert [s["id"] for s in records[MAIN_B]["segments"]] == ["tools"] == [s["id"] for s in records[MAIN_A]["segments"]]
    system_a, system_b = records[MAIN_A]["messages"][0]["content"], records[MAIN_B]["messages"][0]["content"]
    assert system_a.replace("Working directory: /tmp/oc/proj-a", "Working directory: /tmp/oc/proj-b") == system_b
    assert system_a.index("Working directory:") > 0.8 * len(system_a)   # near the end
    assert records[TITLE_A]["messages"][0] == records[TITLE_B]["messages"][0]


@pytest.mark.parametrize("block_tokens", [64, 256])
def test_replay_serves_what_the_blocks_predict(serve, tiny_8k, records, block_tokens, capsys):
    server = serve("--model", str(tiny_8k), "--cache-bytes", "512MiB", "--block-tokens", str(block_tokens))
    assert main(["replay", str(TRACE), "--url", server.url, "--tokenizer", "tiny", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["agrees"] for row in rows] == [True] * 4
    assert [row["input_tokens"] for row in rows] == [r["usage"]["prompt_tokens"] for r in records]
    tokenizer = load_transformers_tokenizer("tiny")
    assert [row["cached_tokens"] for row in rows] == expected_cached(records, tokenizer, block_tokens)
    main_b = rows[MAIN_B]
    system_message = records[MAIN_B]["parts"][2]["tokens"]
    assert main_b["cached_tokens"] > main_b["input_tokens"] - system_message   # tools and blocks of the message


def test_bench_opencode_prints_and_writes_the_share_per_request(tiny_8k, tmp_path, capsys):
    markdown = tmp_path / "BENCHMARKS.md"
    assert main(["bench", "opencode", "--trace", str(TRACE), "--model", str(tiny_8k), "--block-tokens", "128",
                 "--markdown", str(markdown), "--json", str(tmp_path / "figures.json")]) == 0
    out = capsys.readouterr().out
    assert "cached, 128-token blocks" in out and "tools [system,user]" in out
    figures = json.loads((tmp_path / "figures.json").read_text())
    tokenizer = load_transformers_tokenizer("tiny")
    expected = expected_cached([json.loads(line) for line in TRACE.read_text().splitlines()], tokenizer, 128)
    assert [f["cached"]["128"]["served"] for f in figures] == expected
    assert "## opencode trace" in markdown.read_text()
    assert len(read_trace(TRACE).requests) == 4


def test_analyze_with_the_recording_servers_blocks_equals_what_it_served(capsys):
    # The trace was recorded by a server with --block-tokens 256; the tree metric over its recorded parts,
    # cut into the same blocks, reads what that server read from its cache.
    assert main(["analyze", str(TRACE), "--block-tokens", "256", "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["tree_hit_tokens"] == row["served_cached_tokens"] == 573 + 7082
    assert main(["analyze", str(TRACE), "--block-tokens", "64", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tree_hit_tokens"] == 573 + 7274
