"""Many clients at once: every request completes, the cache stays consistent."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from segcache.config import ServeConfig

SHARED = "Shared rules for every client: answer in one word."


def test_sixteen_concurrent_clients_all_finish(app_server, load):
    server = app_server(ServeConfig(model="tiny", cache_bytes=200_000), load("tiny", "float32"))

    def one(i: int):
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300)
        stream = i % 2 == 0
        reply = client.chat.completions.create(
            model="tiny-random-llama", max_tokens=4, temperature=0, stream=stream,
            stream_options={"include_usage": True} if stream else None,
            messages=[{"role": "user", "content": f"Question {i}"}],
            extra_body={"segments": [{"id": "shared", "content": SHARED}, {"id": f"own-{i}", "content": f"Client {i}."}]})
        if stream:
            chunks = list(reply)
            return chunks[-1].usage
        return reply.usage

    with ThreadPoolExecutor(16) as pool:
        usages = list(pool.map(one, range(16)))
    assert len(usages) == 16 and all(u.completion_tokens >= 1 for u in usages)
    # all but the first to reach the engine found the shared block cached
    assert sum(u.segments[0]["status"] == "hit" for u in usages) == 15
    server.engine.tree.check()
    assert server.engine.tree.used_bytes <= 200_000


def test_sixty_four_concurrent_clients_all_complete_in_shared_batches(app_server, load):
    server = app_server(ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=1 << 20, max_batch=16),
                        load("tiny", "bfloat16"))
    assert server.engine.batching.batched

    def one(i: int):
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
        reply = client.chat.completions.create(
            model="tiny-random-llama", max_tokens=6, temperature=0,
            messages=[{"role": "user", "content": f"Question {i}"}],
            extra_body={"segments": [{"id": "shared", "content": SHARED}]})
        return reply.usage

    queued = []   # per-tenant queue depths /metrics showed while the clients ran
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(one, i) for i in range(64)]
        while not all(f.done() for f in futures):
            text = httpx.get(server.url + "/metrics").text
            queued += [float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith('segcache_tenant_queue_depth{tenant="default"}')]
        usages = [f.result() for f in futures]
    assert all(u.completion_tokens == 6 for u in usages)
    assert max(queued) > 0, "64 clients over 16 slots: some must have waited, and /metrics must say so"
    health = httpx.get(server.url + "/health").json()
    assert health["batching"]["batched"] and health["queue_depth"] == 0
    assert httpx.get(server.base_url + "/cache", params={"check": "true"}).json()["check"] == "ok"
    server.engine.tree.check()
    runner = server.engine.executor.runner
    assert runner.num_decode_forwards < runner.num_decode_tokens, "no decode step was shared"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'segcache_running_requests 0.0' in metrics and 'segcache_tenant_queue_depth{tenant="default"} 0.0' in metrics
    # decode work: each reply's first token comes from its prefill, the other five from decode rows
    work = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("segcache_decode_work{")}
    assert work["rows"] == 64 * 5 and work["steps"] < work["rows"] and work["seconds"] > 0
