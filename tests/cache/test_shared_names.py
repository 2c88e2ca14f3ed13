"""Segment texts and registry names in a real redis-server: what one replica was sent, another resolves;
a tenant never reads another's; a damaged or foreign value is a miss; a store that is down is a local miss."""

import json

import pytest
import redis

from segcache.bench.tiers import store
from segcache.cache.keys import segment_hash
from segcache.cache.registry import Registry
from segcache.cache.segments import SegmentStore
from segcache.cache.shared import SharedTier
from segcache.cache.shared_names import SharedRegistry, SharedSegmentStore, name_key, text_key
from segcache.server.launch import free_port

GUIDE = "Compliance guide: every reply cites the policy number it relies on."


@pytest.fixture
def url(tmp_path):
    with store(tmp_path) as found:
        if found is None:
            pytest.skip("no redis-server or valkey-server binary: run scripts/setup as root")
        yield found


@pytest.fixture
def replicas(url):
    """Two replicas' text stores and registries over one store (each with its own connection)."""
    tiers = [SharedTier(url), SharedTier(url)]
    yield [(SharedSegmentStore(SegmentStore(1 << 20), tier), SharedRegistry(Registry(), tier)) for tier in tiers]
    for tier in tiers:
        tier.close()


def test_a_text_sent_to_one_replica_resolves_on_another_for_its_tenant_only(replicas):
    (texts_1, _), (texts_2, _) = replicas
    texts_1.put("acme", segment_hash(GUIDE), GUIDE)
    texts_1.shared.flush()
    assert texts_2.get("acme", segment_hash(GUIDE)) == GUIDE
    assert texts_2.local.get("acme", segment_hash(GUIDE)) == GUIDE   # kept locally from then on
    assert texts_2.get("globex", segment_hash(GUIDE)) is None


def test_a_foreign_or_damaged_text_is_a_miss(replicas, url):
    (_, _), (texts_2, _) = replicas
    client = redis.Redis.from_url(url)
    client.set(text_key("globex", segment_hash(GUIDE)), GUIDE.encode())   # another tenant's copy: not acme's key
    assert texts_2.get("acme", segment_hash(GUIDE)) is None
    client.set(text_key("acme", segment_hash(GUIDE)), (GUIDE + "!").encode())   # bytes that do not hash right
    assert texts_2.get("acme", segment_hash(GUIDE)) is None


def test_names_follow_the_latest_put_or_delete_on_any_replica(replicas):
    (_, names_1), (_, names_2) = replicas
    names_1.put("acme", "guide", GUIDE, 14)
    assert names_2.get("acme", "guide").content == GUIDE
    names_2.put("acme", "guide", GUIDE + " Version 2.", 17)
    assert names_1.get("acme", "guide").content == GUIDE + " Version 2."
    assert [e.name for e in names_1.list("acme")] == ["guide"]
    assert names_1.delete("acme", "guide")
    assert names_2.get("acme", "guide") is None and names_2.list("acme") == []
    assert names_2.local.get("acme", "guide") is None   # the stale local copy was dropped too


def test_a_tenant_never_reads_another_tenants_name_even_under_its_key(replicas, url):
    (_, names_1), (_, names_2) = replicas
    names_1.put("acme", "guide", GUIDE, 14)
    assert names_2.get("globex", "guide") is None and names_2.list("globex") == []
    client = redis.Redis.from_url(url)
    client.set(name_key("globex", "guide"), client.get(name_key("acme", "guide")))   # acme's value, globex's key
    assert names_2.get("globex", "guide") is None and names_2.list("globex") == []
    client.set(name_key("acme", "guide"), json.dumps({"tenant": "acme", "name": "guide"}).encode())   # unreadable
    assert names_2.get("acme", "guide") is None                  # replica 2 never had it locally
    assert names_1.get("acme", "guide").content == GUIDE         # replica 1 falls back to its own copy


def test_a_store_that_is_down_leaves_each_replica_its_own_texts_and_names():
    tier = SharedTier(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)   # nothing listens there
    texts, names = SharedSegmentStore(SegmentStore(1 << 20), tier), SharedRegistry(Registry(), tier)
    texts.put("acme", segment_hash(GUIDE), GUIDE)
    names.put("acme", "guide", GUIDE, 14)
    assert texts.get("acme", segment_hash(GUIDE)) == GUIDE
    assert names.get("acme", "guide").content == GUIDE and [e.name for e in names.list("acme")] == ["guide"]
    assert tier.stats.errors >= 1
    tier.close()
