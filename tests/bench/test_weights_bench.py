"""`segcache bench weights`: the interleaving of the formats' timed runs, and its table."""

from collections import Counter

from segcache.bench.weights import rotations, table


def test_every_format_takes_every_position_equally_often():
    orders = rotations(4, 8)
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    for position in range(4):
        assert Counter(order[position] for order in orders) == {0: 2, 1: 2, 2: 2, 3: 2}


def row(fmt, decode, prefill):
    return {"format": fmt, "dtype": "bfloat16", "decode_tok_s": decode, "prefill_tok_s": prefill,
            "identical_answers": 10, "num_prompts": 50, "mean_agreeing_tokens": 20.0, "mean_kl": 0.001,
            "peak_rss_mib": 1000.0}


def test_the_table_gives_ratios_against_bf16():
    rows = [row("bf16", 20.0, {64: 1000.0, 512: 1500.0, 2000: 1200.0}),
            row("int4", 160.0, {64: 900.0, 512: 1500.0, 2000: 1320.0})]
    lines = table(rows).splitlines()
    assert lines[3] == ("| bfloat16/int4 | 160.0 (8.00x) | 900 (0.90x) | 1500 (1.00x) | 1320 (1.10x) | 10/50 | 20.0"
                        " | 0.00100 | 1000 |")
