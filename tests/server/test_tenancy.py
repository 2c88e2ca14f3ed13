"""Tenants on one server: shares of the budget, pins within them, their own figures, and rejected
requests that change nothing (segment store, registry, tree, pins)."""

import httpx
import pytest

from segcache.cache.keys import segment_hash
from segcache.config import ServeConfig

MODEL = "tiny-random-llama"
KEYS = "key-a:acme,key-b:globex"
ADMIN = "admin-secret"
BYTES_PER_TOKEN = 512  # the tiny model's KV: 4 layers x 2 x 2 heads x 16 dims x 4 bytes
BUDGET = 2048 * BYTES_PER_TOKEN
SHARE = BUDGET // 2


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def words(label, count):
    return " ".join(f"{label}{i}" for i in range(count))


def chat(server, key, segments, question="Where is my parcel?", **extra):
    return httpx.post(server.base_url + "/chat/completions", headers=auth(key), json={
        "model": MODEL, "max_tokens": 1, "temperature": 0, "segments": segments,
        "messages": [{"role": "user", "content": question}], **extra})


def warm(server, key, contents, **extra):
    return httpx.post(server.base_url + "/cache/warm", headers=auth(key), json={
        "model": MODEL, "segments": [{"id": f"s{i}", "content": c} for i, c in enumerate(contents)], **extra})


def state(server, key):
    """Everything a rejected request must leave as it was: this tenant's nodes (with access times and
    pins), its named segments, and the whole tree's byte totals."""
    nodes = httpx.get(server.base_url + "/cache", headers=auth(key)).json()["nodes"]
    named = httpx.get(server.base_url + "/segments", headers=auth(key)).json()["data"]
    tree = server.engine.tree
    return nodes, named, tree.used_bytes, tree.num_nodes, len(server.engine.segment_store)


@pytest.fixture
def tenants(app_server, load, monkeypatch):
    monkeypatch.setenv("SEGCACHE_API_KEYS", KEYS)
    config = ServeConfig(model="tiny", cache_bytes=BUDGET, tenant_cache_share=SHARE, admin_key=ADMIN,
                         max_registry_entries=3)
    server = app_server(config, load("tiny", "float32"))
    assert server.engine.executor.bytes_per_token == BYTES_PER_TOKEN
    yield server
    server.engine.tree.check(within_budget=True)


# -- (5) a rejected request changes nothing -----------------------------------------------------------------

def test_a_chat_rejected_for_max_tokens_stores_no_segment_text(tenants):
    before = state(tenants, "key-a")
    text = words("secret", 20)
    reply = chat(tenants, "key-a", [{"id": "x", "content": text}], max_tokens=10**12)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_max_tokens"
    assert state(tenants, "key-a") == before
    later = chat(tenants, "key-a", [{"hash": segment_hash(text)}])
    assert later.status_code == 400 and later.json()["error"]["code"] == "segment_not_found"


def test_a_registry_put_rejected_for_its_size_stores_nothing(tenants):
    before = state(tenants, "key-a")
    reply = httpx.put(tenants.base_url + "/segments/huge", headers=auth("key-a"),
                      json={"content": words("w", 5000), "pin": True})
    assert reply.status_code == 413, reply.text
    assert state(tenants, "key-a") == before
    assert httpx.get(tenants.base_url + "/segments/huge", headers=auth("key-a")).status_code == 404


def test_a_registry_put_rejected_for_the_pin_quota_stores_nothing(tenants):
    before = state(tenants, "key-a")
    reply = httpx.put(tenants.base_url + "/segments/big", headers=auth("key-a"),
                      json={"content": words("w", 400), "pin": True})   # ~1,500 tokens: more than the share (1,024)
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "pin_quota_exceeded"
    assert state(tenants, "key-a") == before


def test_a_warm_rejected_for_the_pin_quota_leaves_the_tree_as_it_was(tenants):
    warm(tenants, "key-a", [words("a", 100)], pin=True).raise_for_status()
    before = state(tenants, "key-a")
    reply = warm(tenants, "key-a", [words("b", 250)], pin=True)   # ~290 + ~860 tokens > 1,024
    assert reply.status_code == 409 and reply.json()["error"]["code"] == "pin_quota_exceeded"
    assert state(tenants, "key-a") == before
    tenants.engine.tree.check(within_budget=True)


def test_a_registry_beyond_its_entry_limit_is_refused_and_unchanged(tenants):
    for name in ("one", "two", "three"):
        httpx.put(tenants.base_url + f"/segments/{name}", headers=auth("key-a"), json={"content": name}).raise_for_status()
    before = state(tenants, "key-a")
    reply = httpx.put(tenants.base_url + "/segments/four", headers=auth("key-a"), json={"content": "four"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "registry_full"
    assert state(tenants, "key-a") == before
    # Replacing an existing name needs no new entry; the other tenant has its own limit.
    httpx.put(tenants.base_url + "/segments/one", headers=auth("key-a"), json={"content": "uno"}).raise_for_status()
    httpx.put(tenants.base_url + "/segments/four", headers=auth("key-b"), json={"content": "four"}).raise_for_status()


# -- (1) pins stay inside the budget, and can be released ---------------------------------------------------

def test_pins_stop_at_the_share_and_never_pass_the_budget(tenants):
    results = [warm(tenants, "key-a", [words(f"p{i}", 60)], pin=True).status_code for i in range(8)]
    assert 200 in results and 409 in results
    tree = tenants.engine.tree
    scope = tenants.engine.scope("acme")
    assert tree.pinned_bytes(scope) <= SHARE and tree.used_bytes <= BUDGET
    # The other tenant still caches: its nodes survive the end of its request.
    chat(tenants, "key-b", [{"id": "b", "content": words("b", 50)}]).raise_for_status()
    assert tree.scope_bytes(tenants.engine.scope("globex")) > 0


def test_delete_pins_and_warm_with_pin_false_release_pins(tenants):
    warm(tenants, "key-a", [words("a", 50)], pin=True).raise_for_status()
    warm(tenants, "key-a", [words("b", 50)], pin=True).raise_for_status()
    tree, scope = tenants.engine.tree, tenants.engine.scope("acme")
    pinned = tree.pinned_bytes(scope)
    released = warm(tenants, "key-a", [words("b", 50)], pin=False)
    assert released.json()["pinned"] is False
    assert 0 < tree.pinned_bytes(scope) < pinned
    reply = httpx.delete(tenants.base_url + "/cache/pins", headers=auth("key-a")).json()
    assert reply["unpinned_bytes"] > 0 and tree.pinned_bytes(scope) == 0
    assert tree.scope_bytes(scope) > 0   # unpinned, still cached


# -- (2) one tenant's traffic does not evict another inside its share ---------------------------------------

def test_a_flooding_tenant_does_not_evict_a_tenant_inside_its_share(tenants):
    acme = [{"id": "rules", "content": words("rule", 60)}, {"id": "skills", "content": words("skill", 60)}]
    chat(tenants, "key-a", acme).raise_for_status()
    for i in range(8):   # 8 x ~340 new tokens: more than the whole budget (2,048)
        chat(tenants, "key-b", [{"id": "flood", "content": words(f"flood{i}x", 70)}]).raise_for_status()
        tenants.engine.tree.check(within_budget=True)
    again = chat(tenants, "key-a", acme).json()
    assert [s["status"] for s in again["usage"]["segments"]] == ["hit", "hit"]


# -- (3) figures per tenant; server-wide ones for the admin only ----------------------------------------------

def test_a_tenant_reads_only_its_own_series_and_the_admin_reads_all(tenants):
    chat(tenants, "key-a", [{"id": "a", "content": words("a", 30)}]).raise_for_status()
    chat(tenants, "key-b", [{"id": "b", "content": words("b", 30)}]).raise_for_status()
    globex = httpx.get(tenants.url + "/metrics", headers=auth("key-b")).text
    samples = [line for line in globex.splitlines() if line and not line.startswith("#")]
    assert samples and all('tenant="globex"' in line or line.startswith("segcache_cache_capacity_bytes")
                           for line in samples)
    assert 'segcache_tenant_cache_bytes{tenant="globex"}' in globex
    admin = httpx.get(tenants.url + "/metrics", headers=auth(ADMIN)).text
    assert 'tenant="acme"' in admin and "\nsegcache_cache_bytes " in admin and "segcache_queue_depth " in admin
    assert httpx.get(tenants.url + "/metrics").status_code == 401


def test_health_says_only_ok_without_a_key(tenants):
    assert httpx.get(tenants.url + "/health").json() == {"status": "ok"}
    own = httpx.get(tenants.url + "/health", headers=auth("key-a")).json()
    assert own["tenant"] == "acme" and own["queued"] == 0 and "queue_depth" not in own
    admin = httpx.get(tenants.url + "/health", headers=auth(ADMIN)).json()
    assert "queue_depth" in admin and {"tenant", "cache_bytes", "share_bytes"} <= set(admin["tenants"][0])


# -- (4) the segment-text store is bounded per tenant ---------------------------------------------------------

def test_one_tenants_segment_texts_cannot_push_out_anothers(app_server, load, monkeypatch):
    monkeypatch.setenv("SEGCACHE_API_KEYS", KEYS)
    server = app_server(ServeConfig(model="tiny", cache_bytes=BUDGET, segment_store_bytes=4000),
                        load("tiny", "float32"))
    kept = "Acme's rules, sent once."
    chat(server, "key-a", [{"id": "rules", "content": kept}]).raise_for_status()
    for i in range(3):
        chat(server, "key-b", [{"id": "junk", "content": f"{i} " + "x" * 1500}]).raise_for_status()
    assert chat(server, "key-a", [{"hash": segment_hash(kept)}]).status_code == 200


# -- (8) strict booleans ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,change", [
    ("/cache/warm", {"pin": 0}),
    ("/chat/completions", {"stream": 1}),
    ("/chat/completions", {"stream": True, "stream_options": {"include_usage": 0}}),
])
def test_numbers_are_not_booleans(tenants, path, change):
    body = {"model": MODEL, "segments": [{"content": "x"}], "messages": [{"role": "user", "content": "hi"}],
            **change}
    if path == "/cache/warm":
        body.pop("messages")
    reply = httpx.post(tenants.base_url + path, headers=auth("key-a"), json=body)
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "invalid_request"
