"""The load mix: every kind of request appears, bad requests say what they expect, hash-only can recover."""

import random

from segcache.cache.keys import segment_hash
from segcache.reliability.workload import MIX, ClientMix, tenant_blocks


def draw(num_steps, clear_cache=True, seed=0):
    own, other = tenant_blocks("a", 0, 40, 20), tenant_blocks("b", 0, 40, 20)
    mix = ClientMix(random.Random(seed), "m", own, (other,), clear_cache=clear_cache)
    return own, other, [mix.next_step() for _ in range(num_steps)]


def test_every_kind_of_request_is_drawn():
    _, _, steps = draw(2000)
    kinds = {s.kind.split(":")[0] for s in steps}
    assert kinds == set(MIX)
    assert {s.kind for s in steps if s.kind.startswith("bad:")} == {
        "bad:unknown_hash", "bad:hash_mismatch", "bad:unknown_name", "bad:n_2", "bad:unknown_model",
        "bad:foreign_hash"}


def test_bad_requests_expect_one_4xx_and_a_code():
    _, _, steps = draw(500)
    for step in (s for s in steps if s.kind.startswith("bad:")):
        assert len(step.expect.statuses) == 1 and 400 <= step.expect.statuses[0] < 500
        assert step.expect.code


def test_a_foreign_hash_is_another_tenants_block():
    own, other, steps = draw(2000)
    foreign = [s for s in steps if s.kind == "bad:foreign_hash"]
    assert foreign and all(s.body["segments"][0]["hash"] == segment_hash(other.rules) for s in foreign)
    assert all(s.body["segments"][0]["hash"] != segment_hash(own.rules) for s in foreign)


def test_hash_only_steps_resend_the_same_segments_with_content():
    _, _, steps = draw(300)
    for step in (s for s in steps if s.kind == "hash_only"):
        sent = step.body["segments"]
        assert all("content" not in s for s in sent)
        resent = step.resend.body["segments"]
        assert [s["hash"] for s in resent] == [s["hash"] for s in sent]
        assert all(segment_hash(s["content"]) == s["hash"] for s in resent)
        assert step.resend.body["messages"] == step.body["messages"]


def test_clears_can_be_left_out():
    _, _, steps = draw(2000, clear_cache=False)
    assert "clear" not in {s.kind for s in steps}


def test_tenant_blocks_are_stable_per_tenant_and_differ_between_tenants():
    assert tenant_blocks("a", 0, 40, 20) == tenant_blocks("a", 0, 40, 20)
    assert tenant_blocks("a", 0, 40, 20).rules != tenant_blocks("b", 0, 40, 20).rules
