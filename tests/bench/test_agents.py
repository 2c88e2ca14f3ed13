import json
import subprocess
import sys


JSON_KEYS = {"ttft_median_after_first_s", "ttft_p90_s", "prefill_tokens_computed", "prefill_tokens_reused",
             "total_s", "decode_tokens_per_s", "peak_rss_bytes"}


def test_quick_run_against_a_real_segcache_server_completes(tmp_path):
    out = tmp_path / "agents.json"
    png = tmp_path / "agents.png"
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Cache hit\n\nkept as it was\n")
    command = [sys.executable, "-m", "segcache", "bench", "agents", "--quick", "--systems", "segcache",
               "--model", "tiny", "--cache-bytes", "64MiB", "--max-tokens", "4",
               "--json", str(out), "--chart", str(png), "--markdown", str(md), "--log-dir", str(tmp_path / "logs")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    data = json.loads(out.read_text())
    assert set(data) == {"systems", "floor"} and set(data["systems"]) == {"segcache"}
    figures = data["systems"]["segcache"]
    assert set(figures) == JSON_KEYS
    # 7 requests share blocks A and B: most of the prompt tokens come from the cache.
    assert figures["prefill_tokens_reused"] > figures["prefill_tokens_computed"] > 0
    assert figures["peak_rss_bytes"] > 0
    assert set(data["floor"]) == {"warm_ttft_s", "floor_s"}
    assert data["floor"]["warm_ttft_s"] > 0 and data["floor"]["floor_s"] > 0  # measured in the engine

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "## Cache hit\n\nkept as it was" in text
    assert "## Agents benchmark" in text and "| segcache |" in text
    assert "Command: `segcache bench agents --quick --systems segcache --model tiny" in text
    row = next(line for line in text.splitlines() if line.startswith("| segcache |"))
    assert "≠" not in row  # the reuse the server reported agrees with the workload's structure
