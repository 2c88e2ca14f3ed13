"""The start-up batch-invariance verdict, both ways, as a user sees it: the log, /health, a refusal."""

import subprocess
import sys

import httpx

from segcache.server.launch import free_port
from tests.conftest import ROOT


def test_auto_in_float32_falls_back_and_says_why(serve):
    server = serve("--model", "tiny", "--dtype", "float32", "--batching", "auto")
    batching = httpx.get(server.url + "/health").json()["batching"]
    assert batching["mode"] == "auto" and not batching["batched"]
    assert "float32" in batching["reason"] and "one sequence per forward" in batching["reason"]


def test_auto_in_bfloat16_batches(serve):
    server = serve("--model", "tiny", "--dtype", "bfloat16")
    batching = httpx.get(server.url + "/health").json()["batching"]
    assert batching["batched"] and "verified" in batching["reason"] and batching["max_batch"] == 16


def test_on_where_the_check_fails_refuses_to_start_and_says_why(tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "segcache", "serve", "--model", "tiny", "--dtype", "float32",
                             "--batching", "on", "--port", str(free_port())], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "--batching on refused" in result.stderr and "float32" in result.stderr
