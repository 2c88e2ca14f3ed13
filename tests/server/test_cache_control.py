"""Cache control over HTTP: tenants, warm and pins, the named registry, lifetime, inspection, metrics."""

import time

import httpx
import openai
import pytest

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
RULES = "Company rules: every answer cites the policy number it relies on."
SKILLS = "Support agent skills: refunds, shipping delays, address changes."
KEYS = "key-a1:acme,key-a2:acme,key-b:globex"


def chat(server, key, segments, question="Where is my parcel?", **extra):
    reply = httpx.post(server.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={
        "model": MODEL, "max_tokens": 2, "temperature": 0, "segments": segments,
        "messages": [{"role": "user", "content": question}], **extra})
    return reply


def seg(content, id_=None, **extra):
    return {"id": id_, "hash": segment_hash(content), "content": content, **extra}


@pytest.fixture
def tenants(app_server, load, monkeypatch):
    monkeypatch.setenv("SEGCACHE_API_KEYS", KEYS)
    return app_server(ServeConfig(model="tiny", cache_bytes=1 << 26, pin_bytes_per_tenant=200_000), load("tiny", "float32"))


def head_tokens(server):
    tokenizer = server.engine.loaded.tokenizer
    return len(tokenizer("<|im_start|>system\n", add_special_tokens=False)["input_ids"])


def test_keys_are_required_when_configured(tenants):
    assert chat(tenants, "wrong", [seg(RULES)]).json()["error"]["code"] == "invalid_api_key"
    reply = httpx.get(tenants.base_url + "/models")
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "missing_api_key"


def test_tenants_never_share_nodes_hashes_or_names(tenants):
    assert chat(tenants, "key-a1", [seg(RULES, "rules"), seg(SKILLS, "skills")]).status_code == 200
    httpx.put(tenants.base_url + "/segments/policy", headers={"Authorization": "Bearer key-a1"},
              json={"content": RULES}).raise_for_status()
    # Another key of the same tenant shares everything.
    same = chat(tenants, "key-a2", [seg(RULES, "rules"), seg(SKILLS, "skills")]).json()
    assert [s["status"] for s in same["usage"]["segments"]] == ["hit", "hit"]
    # The other tenant, sending the exact same segments, gets nothing but its own template head.
    other = chat(tenants, "key-b", [seg(RULES, "rules"), seg(SKILLS, "skills")])
    assert other.json()["usage"]["cached_prefix_tokens"] <= head_tokens(tenants)
    assert [s["status"] for s in other.json()["usage"]["segments"]] == ["computed", "computed"]
    hash_only = chat(tenants, "key-b", [{"hash": segment_hash(SKILLS + " (acme only)")}])
    assert hash_only.json()["error"]["code"] == "segment_not_found"
    chat(tenants, "key-a1", [seg(SKILLS + " (acme only)")]).raise_for_status()
    assert chat(tenants, "key-b", [{"hash": segment_hash(SKILLS + " (acme only)")}]).json()["error"]["code"] == "segment_not_found"
    assert chat(tenants, "key-b", [{"name": "policy"}]).json()["error"]["code"] == "segment_not_found"
    listing = httpx.get(tenants.base_url + "/segments", headers={"Authorization": "Bearer key-b"}).json()
    assert listing["data"] == []
    acme_nodes = httpx.get(tenants.base_url + "/cache", headers={"Authorization": "Bearer key-a1"}).json()
    globex_nodes = httpx.get(tenants.base_url + "/cache", headers={"Authorization": "Bearer key-b"}).json()
    assert acme_nodes["scope"] != globex_nodes["scope"]
    assert not {n["key"] for n in acme_nodes["nodes"]} & {id(n) for n in globex_nodes["nodes"]}
    tenants.engine.tree.check()


def test_clearing_one_tenant_leaves_the_other(tenants):
    chat(tenants, "key-a1", [seg(RULES)]).raise_for_status()
    chat(tenants, "key-b", [seg(RULES)]).raise_for_status()
    httpx.delete(tenants.base_url + "/cache", headers={"Authorization": "Bearer key-b"}).raise_for_status()
    assert httpx.get(tenants.base_url + "/cache", headers={"Authorization": "Bearer key-b"}).json()["nodes"] == []
    assert httpx.get(tenants.base_url + "/cache", headers={"Authorization": "Bearer key-a1"}).json()["nodes"]
    tenants.engine.tree.check()


def test_warm_then_chat_is_a_full_hit_and_warm_is_idempotent(tenants):
    body = {"model": MODEL, "segments": [seg(RULES, "rules"), seg(SKILLS, "skills")]}
    auth = {"Authorization": "Bearer key-a1"}
    first = httpx.post(tenants.base_url + "/cache/warm", headers=auth, json=body).json()
    assert first["cached_segments"] == 2 and first["root_hash"].startswith("sha256:")
    second = httpx.post(tenants.base_url + "/cache/warm", headers=auth, json=body).json()
    assert second["root_hash"] == first["root_hash"]
    assert [s["status"] for s in second["segments"]] == ["hit", "hit"]
    nodes = len(httpx.get(tenants.base_url + "/cache", headers=auth).json()["nodes"])
    reply = chat(tenants, "key-a1", [seg(RULES, "rules"), seg(SKILLS, "skills")]).json()
    assert [s["status"] for s in reply["usage"]["segments"]] == ["hit", "hit"]
    assert len(httpx.get(tenants.base_url + "/cache", headers=auth).json()["nodes"]) == nodes + 2  # message + prompt
    tenants.engine.tree.check()


def test_pins_survive_eviction_and_respect_the_quota(tenants):
    auth = {"Authorization": "Bearer key-a1"}
    pinned = httpx.post(tenants.base_url + "/cache/warm", headers=auth,
                        json={"model": MODEL, "segments": [seg(RULES, "rules")], "pin": True})
    assert pinned.status_code == 200
    tenants.engine.tree.evict(1 << 40)   # everything that may go, goes
    assert chat(tenants, "key-a1", [seg(RULES, "rules")]).json()["usage"]["segments"][0]["status"] == "hit"
    big = "A long policy. " * 400
    over = httpx.post(tenants.base_url + "/cache/warm", headers=auth,
                      json={"model": MODEL, "segments": [seg(big, "big")], "pin": True})
    assert over.status_code == 409 and over.json()["error"]["code"] == "pin_quota_exceeded"
    tenants.engine.tree.check()


def test_registry_update_misses_only_the_renamed_segment(tenants):
    auth = {"Authorization": "Bearer key-a1"}
    put = httpx.put(tenants.base_url + "/segments/skills", headers=auth, json={"content": SKILLS}).json()
    assert put["hash"] == segment_hash(SKILLS) and put["tokens"] > 0
    segments = [seg(RULES, "rules"), {"name": "skills"}]
    chat(tenants, "key-a1", segments).raise_for_status()
    assert [s["status"] for s in chat(tenants, "key-a1", segments).json()["usage"]["segments"]] == ["hit", "hit"]
    httpx.put(tenants.base_url + "/segments/skills", headers=auth, json={"content": SKILLS + " And returns."})
    after = chat(tenants, "key-a1", segments).json()["usage"]["segments"]
    assert [(s["id"], s["status"], s["reason"]) for s in after] == [("rules", "hit", None), ("skills", "computed", "new")]
    assert httpx.get(tenants.base_url + "/segments/skills", headers=auth).json()["content"].endswith("And returns.")
    assert [e["name"] for e in httpx.get(tenants.base_url + "/segments", headers=auth).json()["data"]] == ["skills"]
    assert httpx.delete(tenants.base_url + "/segments/skills", headers=auth).status_code == 200
    assert httpx.get(tenants.base_url + "/segments/skills", headers=auth).status_code == 404


def test_expired_segment_is_evicted_first_and_says_so(tenants):
    chat(tenants, "key-a1", [seg(RULES, "rules"), seg(SKILLS, "skills", ttl_seconds=0.5)]).raise_for_status()
    time.sleep(0.8)
    reply = chat(tenants, "key-a1", [seg(RULES, "rules"), seg(SKILLS, "skills")]).json()
    assert [(s["status"], s["reason"]) for s in reply["usage"]["segments"]] == [("hit", None), ("computed", "expired")]
    metrics = httpx.get(tenants.url + "/metrics", headers={"Authorization": "Bearer key-a1"}).text
    assert 'segcache_tenant_evictions_total{reason="expired",tenant="acme"}' in metrics


def test_budget_holds_after_every_request(app_server, load):
    server = app_server(ServeConfig(model="tiny", cache_bytes=40_000), load("tiny", "float32"))
    for i in range(8):
        chat(server, "any", [seg(f"Block number {i}. " * 20, f"b{i}")]).raise_for_status()
        assert server.engine.tree.used_bytes <= 40_000
        server.engine.tree.check()
    reply = chat(server, "any", [seg("Block number 0. " * 20, "b0")]).json()
    assert reply["usage"]["segments"][0]["reason"] == "evicted"


def test_inspection_lists_and_draws_the_tree(tenants):
    auth = {"Authorization": "Bearer key-a1"}
    chat(tenants, "key-a1", [seg(RULES, "rules")]).raise_for_status()
    listing = httpx.get(tenants.base_url + "/cache?check=true", headers=auth).json()
    assert listing["check"] == "ok"
    labels = [n["label"] for n in listing["nodes"]]
    assert "rules" in labels
    node = listing["nodes"][labels.index("rules")]
    assert node["tokens"] > 0 and node["bytes"] > 0 and node["depth"] == 2
    drawing = httpx.get(tenants.base_url + "/cache?format=text", headers=auth).text
    assert "rules" in drawing


def test_metrics_count_tokens_and_hide_other_tenants(tenants):
    chat(tenants, "key-a1", [seg(RULES)]).raise_for_status()
    chat(tenants, "key-a1", [seg(RULES)]).raise_for_status()
    chat(tenants, "key-b", [seg(SKILLS)]).raise_for_status()
    acme = httpx.get(tenants.url + "/metrics", headers={"Authorization": "Bearer key-a1"}).text
    assert 'segcache_cache_hit_tokens_total{tenant="acme"}' in acme
    assert 'tenant="globex"' not in acme
    assert "segcache_ttft_seconds_bucket" in acme and 'segcache_tenant_cache_bytes{tenant="acme"}' in acme
    assert "segcache_prefill_tokens_total{tenant=\"acme\"}" in acme and "segcache_decode_tokens_total" in acme
    hits = [line for line in acme.splitlines() if line.startswith('segcache_cache_hit_tokens_total{tenant="acme"}')]
    assert float(hits[0].split()[-1]) > 0


def test_openai_sdk_sees_401_as_authentication_error(tenants):
    client = openai.OpenAI(base_url=tenants.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_default_ttl_applies_when_a_segment_sets_none(app_server, load):
    server = app_server(ServeConfig(model="tiny", cache_bytes=1 << 26, default_ttl=0.5), load("tiny", "float32"))
    first = chat(server, "any", [seg(RULES, "rules")]).json()
    assert first["usage"]["segments"][0]["status"] == "computed"
    listing = httpx.get(server.base_url + "/cache").json()
    assert all(n["expires_at"] is not None for n in listing["nodes"])
    time.sleep(0.8)
    again = chat(server, "any", [seg(RULES, "rules")]).json()["usage"]["segments"][0]
    assert (again["status"], again["reason"]) == ("computed", "expired")
    server.engine.tree.check()
