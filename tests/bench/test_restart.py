"""`segcache bench restart` at its smallest, on the tiny model: real servers, a real kill -9 (mechanics only)."""

from segcache.bench.restart import kept, restart_runs, table
from segcache.bench.workload import build_workload


def test_the_disk_tier_serves_the_warm_runs_cached_tokens_after_a_kill(tokenizer, tmp_path):
    workload = build_workload(tokenizer, scale=0.05, turns=2, max_tokens=2)
    runs = restart_runs("disk", workload, 1, ["--model", "tiny", "--disk-cache", str(tmp_path / "disk")], tmp_path)
    assert runs.warm.cached_tokens > runs.cold.cached_tokens
    assert runs.after.cached_tokens == runs.warm.cached_tokens
    assert runs.after.tiers().get("disk", 0) > 0          # the first request read the segments from disk
    assert runs.after.turns[0].cached_tokens == runs.warm.turns[0].cached_tokens
    assert "after kill -9" in table([runs])
    assert "(100.0%)" in kept([runs])[0]
