"""Two real replicas (the tiny model) sharing a real redis-server: a registry name PUT on one and a text
sent to one resolve on the other, through the official openai SDK; another tenant still gets a 400."""

import httpx
import openai
import pytest

from segcache.bench.tiers import store
from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
GUIDE = "Compliance guide: every reply cites the policy number it relies on."
SKILLS = "Support agent skills: refunds, shipping delays, address changes."


@pytest.fixture
def replicas(app_server, load, tmp_path):
    with store(tmp_path) as url:
        if url is None:
            pytest.skip("no redis-server or valkey-server binary: run scripts/setup as root")
        keys = tmp_path / "keys"
        keys.write_text("sk-acme:acme\nsk-globex:globex\n")
        config = ServeConfig(model="tiny", cache_bytes=1 << 24, shared_cache=url, api_keys=str(keys))
        yield [app_server(config, load("tiny", "float32")) for _ in range(2)]


def ask(server, segments, key="sk-acme"):
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    return client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, extra_body={"segments": segments},
                                          messages=[{"role": "user", "content": "Where is my parcel?"}])


def test_names_and_texts_resolve_on_the_other_replica(replicas):
    first, second = replicas
    put = httpx.put(first.base_url + "/segments/guide", json={"content": GUIDE},
                    headers={"Authorization": "Bearer sk-acme"}, timeout=60)
    assert put.status_code == 200
    ask(first, [{"name": "guide"}, {"id": "skills", "content": SKILLS}])
    first.engine.shared.flush()   # texts and KV are written behind the request

    reply = ask(second, [{"name": "guide"}, {"id": "skills", "hash": segment_hash(SKILLS)}])
    receipts = reply.usage.model_extra["segments"]
    assert [r["status"] for r in receipts] == ["hit", "hit"] and {r["tier"] for r in receipts} == {"shared"}
    got = httpx.get(second.base_url + "/segments/guide", headers={"Authorization": "Bearer sk-acme"}, timeout=60)
    assert got.status_code == 200 and got.json()["hash"] == segment_hash(GUIDE)

    for segment in ({"name": "guide"}, {"hash": segment_hash(SKILLS)}):   # another tenant, either replica
        for server in replicas:
            with pytest.raises(openai.BadRequestError) as error:
                ask(server, [segment], key="sk-globex")
            assert error.value.body["code"] == "segment_not_found"
