"""The concurrent benchmark's figures: throughput over wall time, percentiles, batched-vs-off ratios."""

from segcache.bench.concurrent_report import ConcurrentRun, Timed, ratios, table


def run(system: str, clients: int, wall_s: float, ttft_s: float) -> ConcurrentRun:
    return ConcurrentRun(system, clients, wall_s, 100 << 20, tuple(Timed(ttft_s, 2 * ttft_s, 32) for _ in range(clients)))


def test_throughput_counts_every_output_token_over_the_wall_time():
    assert run("segcache", 8, 16.0, 1.0).tokens_per_s == 8 * 32 / 16.0


def test_ratios_pair_each_client_count_with_the_unbatched_run():
    runs = [run("segcache", 8, 10.0, 1.0), run("segcache-batching-off", 8, 40.0, 4.0), run("segcache", 16, 10.0, 1.0)]
    lines = ratios(runs, "segcache", "segcache-batching-off")
    assert lines == ["- 8 clients: output tok/s 4.00x of `--batching off`; wall 0.25x; TTFT p50 0.25x; latency p50 0.25x"]
    assert "| segcache | 16 | 16 | 10.0 | 51.2 |" in table(runs)


def test_decode_throughput_is_rows_over_decode_seconds_and_compared_when_both_ran():
    ours = ConcurrentRun("segcache", 8, 10.0, 1, (Timed(1.0, 2.0, 32),) * 8, decode_work=(248.0, 2.0))
    off = ConcurrentRun("segcache-batching-off", 8, 40.0, 1, (Timed(4.0, 8.0, 32),) * 8, decode_work=(248.0, 8.0))
    assert ours.decode_tokens_per_s == 124.0
    assert "decode tok/s 4.00x; " in ratios([ours, off], "segcache", "segcache-batching-off")[0]
    assert "| 124.0 | - |" in table([ours]) and "| - | - |" in table([run("llamacpp-cache", 8, 10.0, 1.0)])


def test_rows_per_step_is_the_mean_decode_batch():
    ours = ConcurrentRun("segcache", 8, 10.0, 1, (Timed(1.0, 2.0, 32),) * 8, decode_work=(248.0, 2.0),
                         decode_steps=40.0)
    assert ours.rows_per_step == 6.2
    assert "| 124.0 | 6.2 |" in table([ours])


def test_rounds_report_each_systems_median_run_and_the_median_of_per_round_ratios():
    def timed(system, wall_s, round_index):
        return ConcurrentRun(system, 8, wall_s, 1, (Timed(wall_s / 10, wall_s / 5, 32),) * 8, round=round_index)
    # the machine slows down across the rounds: each round's pair is what compares like with like
    runs = [timed("segcache", 10.0, 0), timed("segcache-batching-off", 40.0, 0),
            timed("segcache-batching-off", 35.0, 1), timed("segcache", 30.0, 1),
            timed("segcache", 40.0, 2), timed("segcache-batching-off", 50.0, 2)]
    line, = ratios(runs, "segcache", "segcache-batching-off")
    # per-round wall ratios 0.25, 0.86, 0.80: median 0.80 (the ratio of the median walls, 30 / 40, is 0.75)
    assert line == ("- 8 clients: output tok/s 1.25x of `--batching off`; wall 0.80x; TTFT p50 0.80x; "
                    "latency p50 0.80x (median of 3 rounds)")
    text = table(runs)
    assert "| segcache | 8 | 8 | 30.0 (10.0-40.0) |" in text and "| segcache-batching-off | 8 | 8 | 40.0 (35.0-50.0) |" in text
