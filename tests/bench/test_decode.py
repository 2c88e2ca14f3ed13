"""`segcache bench decode`'s table: ratios against bf16 and against the single stream, peer rows without a batch."""

from segcache.bench.decode import table


def row(fmt, single, step_ms=None, batch=16):
    return {"format": fmt, "dtype": "bfloat16", "single_tok_s": {"cpu": single, "wall": single / 2},
            "batch": batch if step_ms else None, "batch_step_ms": {"cpu": step_ms, "wall": step_ms * 2} if step_ms else None}


def test_the_table_gives_each_format_its_ratios():
    rows = [row("bf16", 10.0, 100.0), row("int4", 40.0, 160.0), row("llama-cpp-python", 80.0)]
    lines = table(rows, "cpu").splitlines()
    assert lines[2] == "| bfloat16/bf16 | 10.0 (1.00x) | B=16: 100.0 | 160.0 (16.00x) | 6.25 |"
    assert lines[3] == "| bfloat16/int4 | 40.0 (4.00x) | B=16: 160.0 | 100.0 (2.50x) | 10.00 |"
    assert lines[4] == "| bfloat16/llama-cpp-python | 80.0 (8.00x) | - | - | - |"
    assert "| 5.0 (1.00x) | B=16: 200.0 |" in table(rows, "wall")


def test_a_peer_that_reports_only_wall_clock_rates_gets_dashes_per_cpu_second():
    peer = {"format": "llama-server", "dtype": "gguf-q4_1", "single_tok_s": {"cpu": None, "wall": 150.0},
            "batch": None, "batch_step_ms": None}
    rows = [row("bf16", 10.0, 100.0), peer]
    assert table(rows, "cpu").splitlines()[3] == "| gguf-q4_1/llama-server | - | - | - | - |"
    assert table(rows, "wall").splitlines()[3] == "| gguf-q4_1/llama-server | 150.0 (30.00x) | - | - | - |"
