"""Many clients at once: every request completes, the cache stays consistent."""

from concurrent.futures import ThreadPoolExecutor

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
