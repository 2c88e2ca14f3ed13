"""Targets are loopback only; keys parse as 'key:tenant'."""

import pytest

from segcache.reliability.target import Target, generated_keys, parse_keys


def test_keys_parse_with_the_tenant_after_the_last_colon():
    assert parse_keys("k1:a, k:2:b") == {"k1": "a", "k:2": "b"}
    assert parse_keys(None) == {}


@pytest.mark.parametrize("text", ["nokey", ":tenant", "key:"])
def test_a_malformed_key_is_refused(text):
    with pytest.raises(ValueError, match="key:tenant"):
        parse_keys(text)


@pytest.mark.parametrize("url", ["http://example.com:8000", "http://10.0.0.1:8000", "https://api.openai.com"])
def test_only_loopback_servers_can_be_targeted(url):
    with pytest.raises(ValueError, match="loopback"):
        Target(url)


def test_generated_keys_give_each_tenant_its_own_keys():
    keys = generated_keys(["a", "b"], 2)
    target = Target("http://127.0.0.1:1", keys)
    assert target.tenants == ["a", "b"]
    assert len(target.keys_of("a")) == 2 and set(target.keys_of("a")).isdisjoint(target.keys_of("b"))


def test_a_server_without_keys_is_one_tenant_with_no_key():
    target = Target("http://localhost:1")
    assert target.tenants == ["default"] and target.keys_of("default") == [None]
