import json

from segcache.bench.report import Floor, ratios, summarize, table, to_json
from segcache.bench.runner import RequestResult, SystemResult
from segcache.bench.usage import PromptUsage

JSON_KEYS = {"ttft_median_after_first_s", "ttft_p90_s", "prefill_tokens_computed", "prefill_tokens_reused",
             "total_s", "decode_tokens_per_s", "peak_rss_bytes"}


def _result(name, ttfts, reused, source="usage"):
    requests = tuple(
        RequestResult(index=i, agent_id=i % 3 + 1, turn=1, ttft_s=ttft, latency_s=ttft + 1.0, decode_s=1.0,
                      completion_tokens=11, usage=PromptUsage(1000, r, 11, source), expected_reused=r,
                      prompt_ids=(), part_ends=(), reply="x")
        for i, (ttft, r) in enumerate(zip(ttfts, reused)))
    return SystemResult(name=name, requests=requests, total_s=sum(ttfts) + len(ttfts), startup_s=1.0,
                        peak_rss_bytes=300 << 20, kv_bytes=None, held_tokens=sum(reused))


def test_summary_figures_follow_their_definitions():
    summary = summarize(_result("segcache", [2.0, 0.4, 0.2, 0.6], [0, 600, 900, 800]))
    assert summary.ttft_median_after_first_s == 0.4
    assert abs(summary.ttft_sum_s - 3.2) < 1e-9
    assert (summary.prefill_tokens_computed, summary.prefill_tokens_reused) == (4000 - 2300, 2300)
    assert summary.decode_tokens_per_s == 10.0  # 10 tokens after the first, in 1 s, per request
    assert summary.reuse_agrees


def test_reuse_far_from_the_structure_is_flagged_in_the_table():
    result = _result("llamacpp-cache", [2.0, 1.0], [0, 500])
    off = SystemResult(**{**result.__dict__, "requests": tuple(
        RequestResult(**{**r.__dict__, "expected_reused": r.usage.reused_tokens + 200}) for r in result.requests)})
    assert not summarize(off).reuse_agrees
    assert "≠" in table([summarize(off)])


def test_json_has_exactly_the_issue_shape():
    summaries = [summarize(_result("segcache", [2.0, 0.4], [0, 600])),
                 summarize(_result("llamacpp-cache", [2.0, 1.2], [0, 600], source="server log"))]
    data = json.loads(json.dumps(to_json(summaries, Floor(warm_ttft_s=0.4, floor_s=None))))
    assert set(data) == {"systems", "floor"}
    assert set(data["systems"]) == {"segcache", "llamacpp-cache"}
    assert all(set(figures) == JSON_KEYS for figures in data["systems"].values())
    assert data["floor"] == {"warm_ttft_s": 0.4, "floor_s": None}


def test_ratios_compare_segcache_with_every_peer_and_the_floor():
    summaries = [summarize(_result("segcache", [2.0, 0.4, 0.4], [0, 600, 600])),
                 summarize(_result("segcache-nocache", [2.0, 2.0, 2.0], [0, 0, 0]))]
    lines = ratios(summaries, Floor(warm_ttft_s=0.4, floor_s=0.32))
    assert lines[0].startswith("- vs segcache-nocache: median TTFT after the first request 0.400 s vs 2.000 s "
                               "(5.00x better)")
    assert "1.25x the floor" in lines[1]
    assert lines[2] == "- goal: median TTFT after the first at least 3x lower than with the cache off: 5.0x, met"
    assert lines[3] == "- goal: warm TTFT within 1.25x of the floor: 1.25x, met"
    assert "floor not measured" in ratios(summaries, Floor(0.4, None))[1]
    assert ratios(summaries[1:], Floor(None, None)) == []


def test_a_peer_ahead_of_segcache_reads_as_worse_and_the_goal_as_not_met():
    summaries = [summarize(_result("segcache", [2.0, 1.0, 1.0], [0, 600, 600])),
                 summarize(_result("llamacpp-cache", [2.0, 0.8, 0.8], [0, 600, 600], source="server log"))]
    lines = ratios(summaries, Floor(None, None))
    assert "(1.25x worse)" in lines[0]
    assert lines[-1] == ("- goal: median TTFT after the first at most half of llama-cpp-python's "
                         "with its RAM cache: 0.8x lower, not met")


def test_table_has_a_row_per_system():
    summaries = [summarize(_result(name, [1.0, 0.5], [0, 10])) for name in ("segcache", "segcache-chat")]
    rows = table(summaries).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| segcache |") and rows[3].startswith("| segcache-chat |")
