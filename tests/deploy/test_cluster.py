"""deploy/cluster: two real replicas sharing a real redis-server behind real nginx. The same affinity
header always reaches the same replica; a replica reached for a segment another computed serves it
from the shared store."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from segcache.server.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = "Company rules: every answer cites the policy number it relies on."


@pytest.fixture
def cluster(tmp_path):
    if not (shutil.which("redis-server") or shutil.which("valkey-server")):
        pytest.skip("no redis-server or valkey-server binary: run scripts/setup as root")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("no nginx binary: apt-get install nginx-light")
    port = free_port()
    process = subprocess.Popen([str(ROOT / "deploy" / "cluster"), "--replicas", "2", "--port", str(port), "--",
                                "--model", "tiny"], cwd=ROOT, env={**os.environ, "RUN_DIR": str(tmp_path / "run"), "PYTHON": sys.executable},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the cluster did not start: {process.stdout.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def chat(url, affinity):
    reply = httpx.post(url + "/v1/chat/completions", headers={"X-Segcache-Affinity": affinity}, timeout=120, json={
        "model": "tiny-random-llama", "max_tokens": 2, "temperature": 0,
        "segments": [{"id": "rules", "content": RULES}], "messages": [{"role": "user", "content": "Hello?"}]})
    reply.raise_for_status()
    return reply.headers["x-segcache-replica"], reply.json()["usage"]["segments"][0]


def test_affinity_keeps_a_key_on_one_replica_and_the_store_serves_the_other(cluster):
    first, receipt = chat(cluster, "agent-0")
    assert receipt["status"] == "computed"
    assert {chat(cluster, "agent-0")[0] for _ in range(4)} == {first}
    assert chat(cluster, "agent-0")[1]["tier"] == "ram"
    for index in range(1, 64):   # keys until one hashes to the other replica: its first request there
        replica, receipt = chat(cluster, f"agent-{index}")
        if replica != first:
            break
    assert replica != first
    assert (receipt["status"], receipt["tier"]) == ("hit", "shared")


def test_an_unknown_balance_is_refused_before_anything_starts():
    result = subprocess.run([str(ROOT / "deploy" / "cluster"), "--balance", "random"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "--balance must be affinity or round-robin" in result.stderr
