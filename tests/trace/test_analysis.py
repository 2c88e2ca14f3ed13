"""`segcache analyze` end to end: JSON keys and numbers, the table, the sweep, PNG and HTML files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from segcache.cli import main
from segcache.trace.analysis import parse_pool_sizes
from trace_builders import chatml_input, words

SYSTEM = ("system", words("s", 9))
U1, U2, U3, REWRITTEN = (("user", words(tag, 5)) for tag in "abcz")
# Known answers (see test_metrics): request 2 reuses prefix 22, substring 28, tree 20 of its 38 tokens.
REWRITE = [{"input": chatml_input(SYSTEM, U1, U2, U3), "output": ""},
           {"input": chatml_input(SYSTEM, U1, REWRITTEN, U3), "output": ""}]


def analyze_json(capsys, *args: str) -> list[dict]:
    assert main(["analyze", *args, "--tokenizer", "words", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_one_object_per_trace_with_the_documented_keys(write_jsonl, capsys):
    first, second = write_jsonl(REWRITE, "rewrite.jsonl"), write_jsonl(REWRITE[:1], "single.jsonl")
    rows = analyze_json(capsys, str(first), str(second))
    assert [row["trace"] for row in rows] == ["rewrite.jsonl", "single.jsonl"]
    assert {"trace", "requests", "input_tokens", "prefix_hit_rate", "substring_hit_rate",
            "tree_hit_rate"} <= set(rows[0])
    assert (rows[0]["requests"], rows[0]["input_tokens"]) == (2, 76)
    assert (rows[0]["prefix_hit_rate"], rows[0]["substring_hit_rate"], rows[0]["tree_hit_rate"]) == (
        22 / 76, 28 / 76, 20 / 76)
    assert rows[1]["prefix_hit_rate"] == rows[1]["substring_hit_rate"] == rows[1]["tree_hit_rate"] == 0.0
    assert rows[0]["pool_sweep"] == [] and rows[0]["served_cached_tokens"] is None


def test_pool_tokens_adds_a_sweep_in_ascending_order(write_jsonl, capsys):
    rows = analyze_json(capsys, str(write_jsonl(REWRITE)), "--pool-tokens", "40,10")
    sweep = rows[0]["pool_sweep"]
    assert [s["pool_tokens"] for s in sweep] == [10, 40]
    assert sweep[1]["prefix_hit_rate"] == 22 / 76  # 40 tokens still hold request 1's first 22
    assert sweep[0]["prefix_hit_rate"] == 10 / 76  # 10 tokens hold only its first 10


def test_table_shows_percentages_and_the_gap(write_jsonl, capsys):
    assert main(["analyze", str(write_jsonl(REWRITE)), "--tokenizer", "words"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split() == ["trace", "requests", "input", "tokens", "prefix", "substring", "tree", "gap"]
    assert row.split() == ["trace.jsonl", "2", "76", "28.9%", "36.8%", "26.3%", "7.9", "pp"]


def test_out_writes_a_png_per_trace_and_a_self_contained_html_report(write_jsonl, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(write_jsonl(REWRITE, "agent.jsonl")), "--tokenizer", "words", "--out", str(out)]) == 0
    assert (out / "agent.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert "<span class='tree'>&lt;|im_start|&gt;system" in page  # request 2's reused system message
    assert "<span class='substring'>&lt;|im_start|&gt;user\nc1 c2 c3 c4 c5&lt;|im_end|&gt;" in page


def test_unreadable_trace_exits_2_with_the_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    assert main(["analyze", str(path), "--tokenizer", "words"]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_pool_sizes_read_k_and_m_suffixes():
    assert parse_pool_sizes("32k, 1m,500,1.5k") == [500, 1500, 32000, 1000000]
    with pytest.raises(ValueError, match="32k"):
        parse_pool_sizes("lots")


def test_cli_with_the_served_tokenizer(write_jsonl, model_dir):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}]
    records = [{"messages": messages, "response": {"choices": [{"message": {"content": "7"}}]}},
               {"messages": messages + [{"role": "assistant", "content": "7"}, {"role": "user", "content": "Another."}]}]
    done = subprocess.run([sys.executable, "-m", "segcache", "analyze", str(write_jsonl(records)), "--format", "json"],
                          capture_output=True, text=True, check=True)
    row = json.loads(done.stdout)[0]
    assert row["requests"] == 2 and row["input_tokens"] > 20
    assert 0 < row["tree_hit_rate"] < row["prefix_hit_rate"] <= row["substring_hit_rate"] + 4 / row["input_tokens"]
