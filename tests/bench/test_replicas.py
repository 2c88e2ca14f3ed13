"""`segcache bench replicas` at its smallest: a real cluster (redis-server, 2 tiny replicas, nginx), mechanics only."""

import shutil
from pathlib import Path

import pytest

from segcache.bench.replicas import cluster_run, table
from segcache.bench.workload import build_workload


def test_with_affinity_each_agent_stays_on_one_replica(tokenizer, tmp_path):
    if not (shutil.which("redis-server") or shutil.which("valkey-server")):
        pytest.skip("no redis-server or valkey-server binary: run scripts/setup as root")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("no nginx binary: apt-get install nginx-light")
    workload = build_workload(tokenizer, scale=0.05, turns=2, max_tokens=2)
    run = cluster_run("affinity", 2, 3, workload, ["--model", "tiny", "--log-level", "warning"], tmp_path)
    turns = run.figures.turns
    assert len(turns) == 6 and all(t.replica for t in turns)
    for agent in range(3):
        assert len({t.replica for t in turns if t.agent_index == agent}) == 1
    assert run.figures.cached_tokens > 0
    assert sum(run.figures.replicas().values()) == 6
    assert "| affinity | 6 |" in table([run])
