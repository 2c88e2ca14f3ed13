import json
import logging

import pytest

from segcache.client.audit import CacheAudit, Prices, record_from_usage

SEGCACHE_USAGE = {"prompt_tokens": 17773, "completion_tokens": 12, "total_tokens": 17785, "input_tokens": 17773,
                  "output_tokens": 12, "cached_prefix_tokens": 17345,
                  "prompt_tokens_details": {"cached_tokens": 17345},
                  "segments": [{"id": s, "hash": "sha256:0", "tokens": 10, "cached_tokens": 10, "status": "hit",
                                "reason": None} for s in "abc"]
                  + [{"id": "d", "hash": "sha256:1", "tokens": 9, "cached_tokens": 0, "status": "computed",
                      "reason": "new"}]}


def test_audit_logs_one_line_per_call(caplog):
    audit = CacheAudit()
    with caplog.at_level(logging.INFO, logger="segcache.client.audit"):
        audit.add(record_from_usage("m", SEGCACHE_USAGE))
    assert caplog.messages == ["[cache] hit 97.6% read 17,345 new 428 segments 3/4"]


def test_audit_reads_openai_usage_without_segcache_fields():
    usage = {"prompt_tokens": 2000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1536}}
    record = record_from_usage("gpt", usage, label="docs")
    assert (record.input_tokens, record.read_tokens, record.new_tokens, record.output_tokens) == (2000, 1536, 464, 5)
    assert record.line() == "[cache] hit 76.8% read 1,536 new 464 segments 0/0 (docs)"


def test_audit_appends_jsonl(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = CacheAudit(jsonl_path=path)
    audit.add(record_from_usage("m", SEGCACHE_USAGE, label="backend"))
    audit.add(record_from_usage("m", SEGCACHE_USAGE, resent=True))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["label"], r["read_tokens"], r["new_tokens"], r["resent"]) for r in rows] == [
        ("backend", 17345, 428, False), (None, 17345, 428, True)]


def test_summary_prices_the_briefs_three_requests():
    """62k uncached ~$0.31; 50k cached + 12k new ~$0.08; 60k cached + 2k new ~$0.04 at a tenth for reads."""
    audit = CacheAudit(prices=Prices(new=5.0, read=0.5, output=0.0))
    for label, read in [("agent1", 0), ("agent2", 50_000), ("agent1", 60_000)]:
        audit.add(record_from_usage("m", {"input_tokens": 62_000, "cached_prefix_tokens": read, "output_tokens": 0},
                                    label=label))
    summary = audit.summary()
    assert summary.total.cost == pytest.approx(0.31 + 0.085 + 0.04)
    assert summary.total.cost_uncached == pytest.approx(3 * 0.31)
    assert summary.by_label["agent1"].calls == 2
    assert summary.by_label["agent2"].cost == pytest.approx(0.085)
    assert summary.by_label["agent1"].read_tokens == 60_000
    assert "agent2" in audit.table() and "total" in audit.table()


def test_summary_counts_resends():
    audit = CacheAudit()
    audit.add(record_from_usage("m", SEGCACHE_USAGE, resent=True))
    audit.add(record_from_usage("m", SEGCACHE_USAGE))
    assert audit.summary().resends == 1
    assert audit.summary().total.hit_ratio == pytest.approx(17345 / 17773)
