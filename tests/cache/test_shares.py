"""Per-scope shares of the budget: who is evicted first, and how much each scope may pin."""

import pytest

from segcache.cache import PartSpec, SegmentTree, part_key, scope_key
from segcache.cache.tree import PinQuotaError, SharePolicy

ACME = scope_key("acme", "m", "w", "float32", "t")
GLOBEX = scope_key("globex", "m", "w", "float32", "t")
INITECH = scope_key("initech", "m", "w", "float32", "t")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1  # every call is a new instant, so LRU order is insertion order unless touched
        return self.now


def leaf(tree, scope, name, num_bytes=10):
    """One part directly under the scope root, inserted, evicted to capacity and checked as the engine does."""
    node = tree.insert(tree.root(scope), PartSpec(part_key("segment", "system", name), (1,), name), None, num_bytes)
    tree.evict_to_capacity()
    tree.check(within_budget=True)
    return node


def names(evictions):
    return [e.key for e in evictions]


@pytest.fixture
def tree():
    tree = SegmentTree(100, clock=FakeClock(), shares=SharePolicy(floor_bytes=20))
    yield tree
    tree.check(within_budget=True)


def test_a_scope_inside_its_share_is_never_evicted_by_another_scopes_traffic(tree):
    warm = [leaf(tree, ACME, f"acme-{i}") for i in range(4)]       # 40 bytes, inside a 50-byte share
    flood = [leaf(tree, GLOBEX, f"globex-{i}") for i in range(30)]  # 300 bytes offered
    assert all(tree.contains(node) for node in warm)
    assert [tree.contains(node) for node in flood] == [False] * 24 + [True] * 6  # globex keeps 60, its LRU tail
    assert tree.scope_bytes(ACME) == 40 and tree.used_bytes == 100


def test_without_shares_the_flood_takes_the_oldest_of_anyone():
    tree = SegmentTree(100, clock=FakeClock())
    warm = [leaf(tree, ACME, f"acme-{i}") for i in range(4)]
    for i in range(10):
        leaf(tree, GLOBEX, f"globex-{i}")
    assert not any(tree.contains(node) for node in warm)


def test_eviction_takes_from_the_scope_furthest_over_its_share_first(tree):
    acme = [leaf(tree, ACME, f"acme-{i}") for i in range(5)]
    globex = [leaf(tree, GLOBEX, f"globex-{i}") for i in range(5)]   # now full: 50 + 50
    tree.touch(acme[:1])
    initech = leaf(tree, INITECH, "initech-0", num_bytes=30)       # shares drop to 33 each
    # 30 bytes over: acme and globex are both 17 over; ties go to the older leaf (acme's), then
    # alternate as each becomes the one further over.
    assert [tree.contains(n) for n in acme] == [True, False, False, True, True]
    assert [tree.contains(n) for n in globex] == [False, True, True, True, True]
    assert tree.contains(initech)


def test_a_new_scope_can_claim_its_share_back_from_a_full_one(tree):
    for i in range(10):
        leaf(tree, GLOBEX, f"globex-{i}")  # alone, globex may use the whole budget
    assert tree.scope_bytes(GLOBEX) == 100
    for i in range(5):
        leaf(tree, ACME, f"acme-{i}")
    assert tree.scope_bytes(ACME) == 50 and tree.scope_bytes(GLOBEX) == 50


def test_pins_stop_at_the_guaranteed_share_and_a_refused_pin_changes_nothing(tree):
    first, second, third = (leaf(tree, ACME, f"acme-{i}") for i in range(3))
    tree.pin([first, second])                      # 20 = the floor, the share no newcomer can shrink
    assert tree.pin_room(ACME) == 0 and tree.pin_room(GLOBEX) == 20
    with pytest.raises(PinQuotaError):
        tree.pin([third])
    assert not third.pinned and tree.pinned_bytes(ACME) == 20
    assert tree.unpin_scope(ACME) == 20 and tree.pin_room(ACME) == 20


def test_pins_of_all_scopes_never_pass_the_budget():
    tree = SegmentTree(100, clock=FakeClock(), shares=SharePolicy(share_bytes=60))
    tree.pin([leaf(tree, ACME, f"acme-{i}") for i in range(6)])
    assert tree.pin_room(GLOBEX) == 40
    globex = [tree.insert(tree.root(GLOBEX), PartSpec(part_key("segment", "system", f"g{i}"), (1,)), None, 10)
              for i in range(5)]   # 50 bytes, inside globex's 60-byte share, but only 40 left to pin
    with pytest.raises(PinQuotaError):
        tree.pin(globex)
    assert tree.pinned_bytes(GLOBEX) == 0
    tree.pin(globex[:4])
    tree.evict_to_capacity()
    tree.check(within_budget=True)


def test_without_a_policy_pins_are_capped_by_the_budget():
    tree = SegmentTree(100, clock=FakeClock())
    big = tree.insert(tree.root(ACME), PartSpec(part_key("segment", "system", "big"), (1,)), None, 101)
    with pytest.raises(PinQuotaError):
        tree.pin([big])


def test_check_within_budget_reports_evictable_bytes_over_the_budget(tree):
    tree.insert(tree.root(ACME), PartSpec(part_key("segment", "system", "big"), (1,)), None, 150)
    tree.check()  # a request may pass the budget between insert and evict_to_capacity
    with pytest.raises(AssertionError, match="exceed the budget"):
        tree.check(within_budget=True)
    tree.evict_to_capacity()


def test_check_within_budget_allows_locked_chains_over_the_budget(tree):
    node = tree.insert(tree.root(ACME), PartSpec(part_key("segment", "system", "big"), (1,)), None, 150)
    tree.lock([node])
    tree.check(within_budget=True)
    tree.unlock([node])
    tree.evict_to_capacity()


def test_share_policy_rejects_negative_sizes_and_computes_fair_shares():
    with pytest.raises(ValueError):
        SharePolicy(share_bytes=-1)
    policy = SharePolicy()
    assert policy.share(800, 1) == 800 and policy.share(800, 4) == 200 and policy.share(800, 100) == 100
    assert policy.pin_limit(800) == 100 and SharePolicy(pin_quota_bytes=7).pin_limit(800) == 7
    assert SharePolicy(share_bytes=300).share(800, 9) == 300


def test_lru_only_keeps_one_lru_and_caps_pins_by_the_quota():
    tree = SegmentTree(100, clock=FakeClock(), shares=SharePolicy(lru_only=True, pin_quota_bytes=30))
    warm = [leaf(tree, ACME, f"acme-{i}") for i in range(4)]
    for i in range(10):
        leaf(tree, GLOBEX, f"globex-{i}")
    assert not any(tree.contains(node) for node in warm)
    assert tree.pin_limit() == 30 and tree.share(ACME) == 100
