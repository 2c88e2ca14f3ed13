"""The noisy-neighbour run: with shares, a flooding tenant leaves the victim's blocks cached; with one LRU it does not."""

from segcache.reliability.noisy import NoisyConfig, as_text, run_noisy
from segcache.reliability.target import parse_keys, spawned_server

KEYS = parse_keys("ka:victim,kb:noise")
CONFIG = NoisyConfig(rounds=4, windows=2)


def run(share: str):
    flags = ("--tenant-cache-share", share, "--pin-bytes-per-tenant", "64KiB")
    with spawned_server(KEYS, "tiny", "512KiB", flags) as target:
        return run_noisy(target, CONFIG, share)


def test_shares_keep_the_victims_blocks_and_one_lru_loses_them(tiny_model_dir):
    shared, lru = run("auto"), run("off")
    assert shared.hit_rates[0] == 1.0 and min(shared.hit_rates) >= 0.99
    assert lru.overall < 0.9
    for result in (shared, lru):
        assert result.checks_clean and 0 < result.peak_bytes <= result.capacity_bytes
        assert result.flood_statuses.get(409, 0) > 0   # B's pins stop at its quota
    table = as_text([shared, lru], CONFIG)
    assert "| all | **100.0%** |" in table
