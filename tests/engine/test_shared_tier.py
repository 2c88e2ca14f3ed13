"""The shared tier with a real redis-server on loopback: replica 2 serves from the store what replica 1
computed, bit for bit; tenants never read each other's entries; a store that stops costs a recompute
and a counter, never an error."""

import shutil
import subprocess
import time

import pytest
import redis
import torch

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.prompt import SegmentText
from segcache.engine.request import EngineRequest, SamplingParams, SegmentInput
from segcache.server.launch import free_port

RULES = "You are a careful engineering assistant. Answer in one short sentence and name the file you would change."
BACKEND = "Backend agent: you own the HTTP API in server.py and the schema in db.py."


@pytest.fixture
def store(tmp_path):
    """A redis-server with its own memory limit and LRU policy, on a free loopback port."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        pytest.skip("no redis-server or valkey-server binary: run scripts/setup as root (installs Debian's redis-server)")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield url, process
    process.terminate()
    process.wait(timeout=10)


def chat(question: str, tenant: str = "tenant") -> EngineRequest:
    segments = tuple(SegmentInput(SegmentText(c, i, segment_hash(c))) for c, i in ((RULES, "rules"), (BACKEND, "backend")))
    return EngineRequest(tenant, "chat", segments, ({"role": "user", "content": question},),
                         sampling=SamplingParams(max_tokens=6, temperature=0), keep_logits=True)


def replica(loaded, dtype: str, url: str) -> Engine:
    return Engine(ServeConfig(model="default", dtype=dtype, cache_bytes=1 << 30, shared_cache=url), loaded=loaded)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_replica_serves_what_another_computed_bit_for_bit(store, load, dtype):
    loaded = load("default", dtype)
    uncached = Engine(ServeConfig(model="default", dtype=dtype, cache_bytes=0), loaded=loaded)
    *_, base = uncached.run(chat("Where is the schema?"))
    one, two = replica(loaded, dtype, store[0]), replica(loaded, dtype, store[0])
    report, *_ = one.run(chat("Where is the schema?"))
    assert [r.status for r in report.receipts] == ["computed", "computed"]
    one.shared.flush()
    report, *_, finished = two.run(chat("Where is the schema?"))
    assert [(r.status, r.tier) for r in report.receipts] == [("hit", "shared"), ("hit", "shared")]
    assert finished.token_ids == base.token_ids and torch.equal(finished.first_logits, base.first_logits)
    two.tree.check()
    for engine in (uncached, one, two):
        engine.close()


def test_tenants_never_load_each_others_entries(store, load):
    loaded = load("default", "float32")
    one, two = replica(loaded, "float32", store[0]), replica(loaded, "float32", store[0])
    one.run(chat("Where is the schema?", tenant="acme"))
    one.shared.flush()
    report, *_ = two.run(chat("Where is the schema?", tenant="globex"))
    assert report.cached_tokens == 0 and two.shared.stats.loads == 0
    # globex asking with acme's exact chain keys: its scope names other keys; acme's blobs planted under
    # them fail the header check (the scope is in the header too).
    client = redis.Redis.from_url(store[0])
    acme, globex = one.scope("acme"), two.scope("globex")
    nodes = [node for _, node in one.tree.iter_nodes(acme)]
    assert nodes
    for node in nodes:
        assert two.shared.get(globex, node.chain_key, node.key, node.token_ids) is None
        client.set(two.shared.key(globex, node.chain_key), client.get(one.shared.key(acme, node.chain_key)))
        assert two.shared.get(globex, node.chain_key, node.key, node.token_ids) is None
    assert two.shared.stats.corrupt == len(nodes) and two.shared.stats.loads == 0
    for engine in (one, two):
        engine.close()


def test_a_stopped_store_costs_a_recompute_and_a_counter_never_an_error(store, load, caplog):
    loaded = load("default", "float32")
    url, process = store
    one = replica(loaded, "float32", url)
    *_, before = one.run(chat("Where is the schema?"))
    process.terminate()
    process.wait(timeout=10)
    one.cache.evict(1 << 60)   # RAM emptied: the next request needs a lower tier, and the store is gone
    report, *_, after = one.run(chat("Where is the schema?"))
    assert report.cached_tokens == 0 and after.token_ids == before.token_ids
    assert one.shared.stats.errors >= 1 and "shared cache" in caplog.text and "unavailable" in caplog.text
    report, *_ = one.run(chat("Which file holds the API?"))   # within retry_after_s: not even tried
    assert one.shared.stats.skipped >= 1
    one.close()
