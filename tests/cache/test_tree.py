import pytest

from segcache.cache import (
    Eviction,
    MissReason,
    NodeLockedError,
    PartSpec,
    SegmentTree,
    part_key,
    scope_key,
)
from segcache.cache.heap import LazyHeap

SCOPE = scope_key("acme", "smollm2", "w1", "float32", "tok1")
OTHER_SCOPE = scope_key("globex", "smollm2", "w1", "float32", "tok1")


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def part(name: str, *token_ids: int) -> PartSpec:
    return PartSpec(part_key("segment", "system", name), tuple(token_ids), name)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tree(clock):
    tree = SegmentTree(capacity_bytes=1000, clock=clock)
    yield tree
    tree.check()


def chain(tree, scope, *specs, num_bytes=10, ttl=None):
    """Insert specs as a chain below the scope root; returns the nodes."""
    nodes, parent = [], tree.root(scope)
    for spec in specs:
        parent = tree.insert(parent, spec, payload=f"kv:{spec.label}", num_bytes=num_bytes, ttl_seconds=ttl)
        nodes.append(parent)
        tree.check()
    return nodes


def labels(evictions):
    return [(eviction.num_tokens, eviction.reason) for eviction in evictions]


# -- roots ------------------------------------------------------------------------------------------------

def test_root_is_created_once_locked_and_empty(tree):
    root = tree.root(SCOPE)
    assert tree.root(SCOPE) is root
    assert root.is_root and root.is_leaf and root.lock_count == 1
    assert (root.key, root.token_ids, root.num_bytes, root.start, root.end) == (None, (), 0, 0, 0)
    assert tree.scopes() == [SCOPE] and tree.used_bytes == 0 and tree.num_nodes == 0
    tree.check()


def test_constructor_rejects_negative_sizes(clock):
    with pytest.raises(ValueError, match="must be >= 0"):
        SegmentTree(-1, clock=clock)


# -- insert -----------------------------------------------------------------------------------------------

def test_insert_links_child_and_counts_bytes(tree, clock):
    head, rules = chain(tree, SCOPE, part("head", 1, 2), part("rules", 3, 4, 5))
    assert rules.parent is head and head.parent is tree.root(SCOPE)
    assert (head.start, head.end, rules.start, rules.end) == (0, 2, 2, 5)
    assert rules.chain() == [head, rules] and head.chain() == [head]
    assert rules.label == "rules" and rules.payload == "kv:rules" and rules.scope == SCOPE
    assert rules.last_access == rules.created_at == clock.now and rules.hits == 0 and rules.expires_at is None
    assert tree.used_bytes == 20 and tree.num_nodes == 2
    assert tree.scope_bytes(SCOPE) == 20 and tree.scope_nodes(SCOPE) == 2
    assert not head.is_leaf and rules.is_leaf


def test_insert_of_an_existing_part_returns_it_unchanged(tree):
    (rules,) = chain(tree, SCOPE, part("rules", 1, 2))
    again = tree.insert(tree.root(SCOPE), part("rules", 1, 2), payload="other kv", num_bytes=999)
    assert again is rules and rules.payload == "kv:rules" and rules.num_bytes == 10
    assert tree.used_bytes == 10 and tree.num_nodes == 1


def test_insert_normalises_token_ids_to_a_tuple(tree):
    node = tree.insert(tree.root(SCOPE), PartSpec(part_key("m", "user", "hi"), [7, 8]), None, 1)  # type: ignore
    assert node.token_ids == (7, 8)
    assert tree.match(SCOPE, [PartSpec(node.key, [7, 8])]).nodes == [node]  # type: ignore[arg-type]


def test_insert_with_ttl_sets_expiry_and_renews_an_existing_node(tree, clock):
    (rules,) = chain(tree, SCOPE, part("rules", 1), ttl=60)
    assert rules.expires_at == clock.now + 60
    clock.advance(30)
    tree.insert(tree.root(SCOPE), part("rules", 1), None, 10)  # no ttl: a live expiry is kept
    assert rules.expires_at == clock.now + 30
    tree.insert(tree.root(SCOPE), part("rules", 1), None, 10, ttl_seconds=5)
    assert rules.expires_at == clock.now + 5


def test_insert_revives_an_expired_node(tree, clock):
    (rules,) = chain(tree, SCOPE, part("rules", 1), ttl=1)
    clock.advance(2)
    assert tree.match(SCOPE, [part("rules", 1)]).miss_reason == MissReason.EXPIRED
    assert tree.insert(tree.root(SCOPE), part("rules", 1), None, 10) is rules
    assert rules.expires_at is None
    assert tree.match(SCOPE, [part("rules", 1)]).nodes == [rules]


def test_insert_rejects_bad_arguments(tree):
    root = tree.root(SCOPE)
    with pytest.raises(ValueError, match="num_bytes must be >= 0"):
        tree.insert(root, part("a", 1), None, -1)
    with pytest.raises(ValueError, match="ttl_seconds must be >= 0"):
        tree.insert(root, part("a", 1), None, 1, ttl_seconds=-1)
    assert tree.num_nodes == 0


def test_insert_under_an_evicted_parent_raises(tree):
    (head,) = chain(tree, SCOPE, part("head", 1))
    tree.evict(10)
    with pytest.raises(ValueError, match="no longer in the cache"):
        tree.insert(head, part("rules", 2), None, 1)


def test_zero_token_parts_are_allowed(tree):
    head, empty, tail = chain(tree, SCOPE, part("head", 1), part("empty"), part("tail", 2))
    assert (empty.start, empty.end, tail.start) == (1, 1, 1)
    assert tree.match(SCOPE, [part("head", 1), part("empty"), part("tail", 2)]).num_tokens == 2


# -- match ------------------------------------------------------------------------------------------------

def test_match_returns_the_longest_cached_chain(tree):
    head, rules = chain(tree, SCOPE, part("head", 1, 2), part("rules", 3, 4))
    result = tree.match(SCOPE, [part("head", 1, 2), part("rules", 3, 4), part("question", 5)])
    assert result.nodes == [head, rules] and result.num_tokens == 4 and result.miss_reason == MissReason.NEW
    full = tree.match(SCOPE, [part("head", 1, 2), part("rules", 3, 4)])
    assert full.nodes == [head, rules] and full.num_tokens == 4 and full.miss_reason is None


def test_match_of_no_parts_is_complete(tree):
    assert tree.match(SCOPE, []) == ([], 0, None)


def test_match_on_an_unknown_scope_is_new_and_creates_nothing(tree):
    assert tree.match(SCOPE, [part("head", 1)]) == ([], 0, MissReason.NEW)
    assert tree.scopes() == []


def test_match_does_not_modify_anything(tree, clock):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2), ttl=10)
    before = [(n.last_access, n.hits, n.expires_at, n.lock_count) for n in (head, rules)]
    clock.advance(5)
    tree.match(SCOPE, [part("head", 1), part("rules", 2)])
    tree.match(SCOPE, [part("head", 1), part("missing", 3)])
    assert [(n.last_access, n.hits, n.expires_at, n.lock_count) for n in (head, rules)] == before


def test_match_reports_boundary_when_the_key_matches_with_other_tokens(tree):
    (head,) = chain(tree, SCOPE, part("head", 1, 2))
    result = tree.match(SCOPE, [part("head", 1, 3)])
    assert result == ([], 0, MissReason.BOUNDARY)


def test_match_reports_expired_for_a_node_past_its_ttl(tree, clock):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.set_ttl([rules], 10)
    clock.advance(10)  # expires_at <= now: expired
    assert tree.match(SCOPE, [part("head", 1), part("rules", 2)]) == ([head], 1, MissReason.EXPIRED)
    tree.evict(0)
    assert tree.match(SCOPE, [part("head", 1), part("rules", 2)]) == ([head], 1, MissReason.EXPIRED)


def test_match_reports_evicted_after_lru_eviction(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.evict(10)
    assert tree.match(SCOPE, [part("head", 1), part("rules", 2)]) == ([head], 1, MissReason.EVICTED)
    tree.evict(10)
    assert tree.match(SCOPE, [part("head", 1), part("rules", 2)]) == ([], 0, MissReason.EVICTED)


def test_match_reports_evicted_for_a_descendant_once_its_parent_is_back(tree):
    chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.evict(20)
    (head,) = chain(tree, SCOPE, part("head", 1))
    assert tree.match(SCOPE, [part("head", 1), part("rules", 2)]) == ([head], 1, MissReason.EVICTED)


def test_reinsert_clears_the_tombstone(tree):
    chain(tree, SCOPE, part("head", 1))
    tree.evict(10)
    (head,) = chain(tree, SCOPE, part("head", 1))
    assert tree.match(SCOPE, [part("head", 1)]) == ([head], 1, None)
    tree.check()  # check() also asserts that no live node has a tombstone


def test_tombstones_are_bounded_oldest_forgotten_first(clock):
    tree = SegmentTree(1000, clock=clock, max_tombstones=1)
    chain(tree, SCOPE, part("a", 1))
    chain(tree, SCOPE, part("b", 2))
    tree.evict(20)
    assert tree.match(SCOPE, [part("a", 1)]).miss_reason == MissReason.NEW
    assert tree.match(SCOPE, [part("b", 2)]).miss_reason == MissReason.EVICTED
    no_memory = SegmentTree(1000, clock=clock, max_tombstones=0)
    chain(no_memory, SCOPE, part("a", 1))
    no_memory.evict(10)
    assert no_memory.match(SCOPE, [part("a", 1)]).miss_reason == MissReason.NEW


# -- lock, touch, ttl, pin --------------------------------------------------------------------------------

def test_lock_and_unlock_count_and_reject_underflow(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.lock([head, rules])
    tree.lock([rules])
    assert (head.lock_count, rules.lock_count) == (1, 2)
    with pytest.raises(ValueError, match="without a matching lock"):
        tree.unlock([head, head])
    assert head.lock_count == 1  # all or nothing
    tree.unlock([head, rules, rules])
    assert (head.lock_count, rules.lock_count) == (0, 0)
    with pytest.raises(ValueError, match="without a matching lock"):
        tree.unlock([rules])


def test_root_keeps_its_permanent_lock(tree):
    root = tree.root(SCOPE)
    with pytest.raises(ValueError, match="without a matching lock"):
        tree.unlock([root])
    tree.lock([root])
    tree.unlock([root])
    assert root.lock_count == 1


def test_lock_of_an_evicted_node_raises(tree):
    (head,) = chain(tree, SCOPE, part("head", 1))
    tree.evict(10)
    with pytest.raises(ValueError, match="lock a matched chain before using it"):
        tree.lock([head])
    with pytest.raises(ValueError, match="no longer in the cache"):
        tree.touch([head])


def test_touch_updates_access_time_and_hits(tree, clock):
    (head,) = chain(tree, SCOPE, part("head", 1))
    clock.advance(3)
    tree.touch([head])
    assert (head.last_access, head.hits) == (clock.now, 1)
    clock.advance(3)
    tree.touch([head], hit=False)
    assert (head.last_access, head.hits) == (clock.now, 1)


def test_set_ttl_sets_and_clears_expiry(tree, clock):
    (head,) = chain(tree, SCOPE, part("head", 1))
    tree.set_ttl([head], 5)
    assert head.expires_at == clock.now + 5
    tree.set_ttl([head], None)
    assert head.expires_at is None
    clock.advance(100)
    assert tree.evict(0) == []
    with pytest.raises(ValueError, match="scope root"):
        tree.set_ttl([tree.root(SCOPE)], 5)


def test_pin_counts_pinned_bytes_per_scope_and_is_idempotent(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2), num_bytes=7)
    chain(tree, OTHER_SCOPE, part("head", 1))
    tree.pin([head, rules])
    tree.pin([rules])
    assert tree.pinned_bytes(SCOPE) == 14 and tree.pinned_bytes(OTHER_SCOPE) == 0
    tree.unpin([rules])
    tree.unpin([rules])
    assert tree.pinned_bytes(SCOPE) == 7 and not rules.pinned
    assert tree.pinned_bytes(scope_key("nobody", "m", "w", "d", "t")) == 0


# -- evict ------------------------------------------------------------------------------------------------

def test_evict_removes_least_recently_used_leaves_in_order(tree, clock):
    nodes = {}
    for name, token in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        (nodes[name],) = chain(tree, SCOPE, part(name, token))
        clock.advance(1)
    tree.touch([nodes["a"]])  # a is now the most recent
    clock.advance(1)
    tree.touch([nodes["c"]])
    evictions = tree.evict(40)
    assert [eviction.key for eviction in evictions] == [nodes[name].key for name in ("b", "d", "a", "c")]
    assert evictions[0] == Eviction(SCOPE, nodes["b"].key, 1, 10, MissReason.EVICTED)


def test_evict_frees_at_least_the_bytes_asked_and_stops_there(tree, clock):
    for name, token in (("a", 1), ("b", 2), ("c", 3)):
        chain(tree, SCOPE, part(name, token))
        clock.advance(1)
    assert len(tree.evict(11)) == 2  # 10 bytes are not enough, 20 are
    assert tree.used_bytes == 10


def test_evict_takes_a_parent_only_after_its_children(tree, clock):
    head, rules, agent = chain(tree, SCOPE, part("head", 1), part("rules", 2), part("agent", 3))
    clock.advance(1)
    (other,) = chain(tree, SCOPE, part("other", 9))
    # head, rules and agent are older than other, but only the leaf agent is a candidate at first.
    evictions = tree.evict(40)
    assert [e.key for e in evictions] == [agent.key, rules.key, head.key, other.key]


def test_evict_never_takes_locked_or_pinned_nodes(tree, clock):
    locked, pinned, free = (chain(tree, SCOPE, part(name, i))[0] for i, name in enumerate(("l", "p", "f")))
    tree.lock([locked])
    tree.pin([pinned])
    evictions = tree.evict(1000)
    assert [e.key for e in evictions] == [free.key]
    assert tree.used_bytes == 20
    tree.unlock([locked])
    assert [e.key for e in tree.evict(1000)] == [locked.key]
    tree.unpin([pinned])
    assert [e.key for e in tree.evict(1000)] == [pinned.key]


def test_a_locked_leaf_keeps_its_ancestors(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.lock([rules])
    assert tree.evict(1000) == []
    assert tree.num_nodes == 2


def test_evict_zero_removes_only_expired_nodes(tree, clock):
    (keep,) = chain(tree, SCOPE, part("keep", 1))
    (expiring,) = chain(tree, SCOPE, part("expiring", 2), ttl=5)
    assert tree.evict(0) == []
    clock.advance(5)
    assert tree.evict(0) == [Eviction(SCOPE, expiring.key, 1, 10, MissReason.EXPIRED)]
    assert tree.num_nodes == 1 and keep.payload == "kv:keep"


def test_evict_removes_expired_nodes_first_and_counts_them(tree, clock):
    (old,) = chain(tree, SCOPE, part("old", 1))
    clock.advance(1)
    (expiring,) = chain(tree, SCOPE, part("expiring", 2), ttl=1)
    clock.advance(1)
    evictions = tree.evict(10)
    assert [(e.key, e.reason) for e in evictions] == [(expiring.key, MissReason.EXPIRED)]
    assert tree.match(SCOPE, [part("old", 1)]).nodes == [old]


def test_pinned_nodes_still_expire(tree, clock):
    (pinned,) = chain(tree, SCOPE, part("pinned", 1), ttl=5)
    tree.pin([pinned])
    clock.advance(5)
    assert labels(tree.evict(0)) == [(1, MissReason.EXPIRED)]
    assert tree.pinned_bytes(SCOPE) == 0


def test_an_expired_parent_drags_its_descendants_leaves_first(tree, clock):
    head, rules, agent = chain(tree, SCOPE, part("head", 1), part("rules", 2, 3), part("agent", 4, 5, 6))
    (sibling,) = chain(tree, SCOPE, part("sibling", 7))
    tree.set_ttl([head], 1)
    tree.set_ttl([agent], 0.5)
    clock.advance(1)
    evictions = tree.evict(0)
    assert [e.key for e in evictions] == [agent.key, rules.key, head.key]
    assert [e.reason for e in evictions] == [MissReason.EXPIRED, MissReason.EVICTED, MissReason.EXPIRED]
    assert tree.num_nodes == 1 and sibling.parent is tree.root(SCOPE)


def test_an_expired_node_with_a_locked_descendant_waits(tree, clock):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.set_ttl([head], 1)
    tree.lock([rules])
    clock.advance(2)
    assert tree.evict(0) == []
    assert tree.match(SCOPE, [part("head", 1)]).miss_reason == MissReason.EXPIRED
    tree.unlock([rules])
    assert [e.reason for e in tree.evict(0)] == [MissReason.EVICTED, MissReason.EXPIRED]
    assert tree.num_nodes == 0


def test_evict_drops_the_payload_of_removed_nodes(tree):
    (head,) = chain(tree, SCOPE, part("head", 1))
    tree.evict(10)
    assert head.payload is None


def test_evict_stops_early_when_nothing_is_evictable(tree):
    (head,) = chain(tree, SCOPE, part("head", 1))
    tree.lock([head])
    assert tree.evict(10**9) == []


def test_evict_rejects_negative_sizes(tree):
    with pytest.raises(ValueError, match="num_bytes must be >= 0"):
        tree.evict(-1)


def test_evict_to_capacity_brings_used_bytes_under_capacity(clock):
    tree = SegmentTree(capacity_bytes=25, clock=clock)
    for name, token in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        chain(tree, SCOPE, part(name, token))
        clock.advance(1)
    assert tree.used_bytes == 40
    evictions = tree.evict_to_capacity()
    assert len(evictions) == 2 and tree.used_bytes == 20
    assert tree.evict_to_capacity() == []
    tree.check()


def test_capacity_zero_evicts_everything_unlocked(clock):
    tree = SegmentTree(capacity_bytes=0, clock=clock)
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.lock([head])
    assert [e.key for e in tree.evict_to_capacity()] == [rules.key]
    assert tree.used_bytes == 10
    tree.check()


def test_eviction_crosses_scopes_by_age(tree, clock):
    (old,) = chain(tree, SCOPE, part("head", 1))
    clock.advance(1)
    (new,) = chain(tree, OTHER_SCOPE, part("head", 1))
    assert tree.evict(10) == [Eviction(SCOPE, old.key, 1, 10, MissReason.EVICTED)]
    assert tree.scope_bytes(SCOPE) == 0 and tree.scope_bytes(OTHER_SCOPE) == 10


# -- scopes -----------------------------------------------------------------------------------------------

def test_scopes_with_identical_parts_never_share_nodes(tree):
    mine = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    theirs = chain(tree, OTHER_SCOPE, part("head", 1), part("rules", 2))
    assert all(a is not b for a, b in zip(mine, theirs))
    assert tree.match(OTHER_SCOPE, [part("head", 1), part("rules", 2)]).nodes == theirs
    assert {node.scope for node in theirs} == {OTHER_SCOPE}
    assert tree.scope_nodes(SCOPE) == tree.scope_nodes(OTHER_SCOPE) == 2
    assert sorted(tree.scopes()) == sorted([SCOPE, OTHER_SCOPE])


def test_remove_scope_drops_the_whole_tree(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2), num_bytes=6)
    tree.pin([rules])
    chain(tree, OTHER_SCOPE, part("head", 1))
    assert tree.remove_scope(SCOPE) == 12
    assert tree.scopes() == [OTHER_SCOPE] and tree.used_bytes == 10 and tree.num_nodes == 1
    assert tree.scope_bytes(SCOPE) == 0 and tree.pinned_bytes(SCOPE) == 0
    assert tree.match(SCOPE, [part("head", 1)]) == ([], 0, MissReason.NEW)
    with pytest.raises(ValueError, match="no longer in the cache"):
        tree.lock([rules])
    assert tree.remove_scope(SCOPE) == 0
    assert tree.root(SCOPE).is_leaf


def test_remove_scope_refuses_while_a_node_is_locked(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    tree.lock([rules])
    with pytest.raises(NodeLockedError, match="retry when they finish"):
        tree.remove_scope(SCOPE)
    assert tree.num_nodes == 2
    tree.unlock([rules])
    assert tree.remove_scope(SCOPE) == 20


def test_iter_nodes_is_depth_first_in_insertion_order(tree):
    head, rules = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    (agent,) = chain(tree, SCOPE, part("head", 1), part("rules", 2), part("agent", 3))[2:]
    (question,) = chain(tree, SCOPE, part("head", 1), part("question", 4))[1:]
    (other,) = chain(tree, SCOPE, part("other", 5))
    assert list(tree.iter_nodes(SCOPE)) == [(1, head), (2, rules), (3, agent), (2, question), (1, other)]
    assert list(tree.iter_nodes(OTHER_SCOPE)) == []


# -- render and check -------------------------------------------------------------------------------------

def test_render_text_draws_the_tree(clock):
    tree = SegmentTree(capacity_bytes=10_000, clock=clock)  # room to pin 1.5 KiB
    head, rules = chain(tree, SCOPE, part("head", 1, 2), part("rules", 3, 4, 5), num_bytes=1536)
    unlabelled = tree.insert(head, PartSpec(part_key("message", "user", "hi"), (6,)), None, 100, ttl_seconds=30)
    tree.pin([rules])
    tree.lock([rules])
    tree.touch([head])
    clock.advance(10)
    text = tree.render_text(SCOPE)
    lines = text.splitlines()
    assert lines[0] == f"scope {SCOPE[:12]}  nodes=3  bytes=3.1KiB  pinned=1.5KiB"
    assert lines[1] == "`-- head  tokens=2 [0,2)  bytes=1.5KiB  hits=1  locks=0  ttl=never"
    assert lines[2] == "    +-- rules  tokens=3 [2,5)  bytes=1.5KiB  hits=0  locks=1  pinned  ttl=never"
    assert lines[3] == f"    `-- {unlabelled.key[:8]}  tokens=1 [2,3)  bytes=100B  hits=0  locks=0  ttl=20.0s"
    assert "ttl=expired" in tree.render_text(SCOPE, now=clock.now + 100)
    tree.unlock([rules])


def test_render_text_of_an_empty_or_unknown_scope(tree):
    assert tree.render_text(SCOPE).endswith("nodes=0  bytes=0B  pinned=0B\n(empty)\n")
    tree.root(SCOPE)
    assert "(empty)" in tree.render_text(SCOPE)


@pytest.mark.parametrize("corrupt, message", [
    (lambda tree, nodes: setattr(tree, "_used_bytes", 5), "used_bytes"),
    (lambda tree, nodes: setattr(nodes[1], "start", 7), "starts at 7"),
    (lambda tree, nodes: setattr(nodes[1], "num_bytes", 11), "recomputed"),
    (lambda tree, nodes: setattr(nodes[1], "lock_count", -1), "lock_count -1"),
    (lambda tree, nodes: setattr(nodes[1], "pinned", True), "pinned_bytes"),
    (lambda tree, nodes: setattr(nodes[1], "parent", tree.root(SCOPE)), "point back"),
    (lambda tree, nodes: setattr(tree.root(SCOPE), "lock_count", 0), "not locked"),
    (lambda tree, nodes: setattr(nodes[1], "last_access", -5.0), "LRU heap"),
])
def test_check_reports_broken_invariants(clock, corrupt, message):
    tree = SegmentTree(1000, clock=clock)
    nodes = chain(tree, SCOPE, part("head", 1), part("rules", 2))
    corrupt(tree, nodes)
    with pytest.raises(AssertionError, match=message):
        tree.check()


def test_lazy_heap_stays_small_under_many_touches(tree, clock):
    nodes = [chain(tree, SCOPE, part(f"n{i}", i))[0] for i in range(10)]
    for _ in range(1000):
        clock.advance(1)
        tree.touch(nodes)
    assert len(tree._lru) <= 2 * len(nodes) + 64
    assert [e.key for e in tree.evict(20)] == [nodes[0].key, nodes[1].key]


def test_lazy_heap_pops_in_priority_order_and_skips_stale_entries(clock):
    tree = SegmentTree(1000, clock=clock)  # its nodes serve as plain heap items here; no check() afterwards
    a, b, c = (chain(tree, SCOPE, part(name, i))[0] for i, name in enumerate("abc"))
    a.last_access, b.last_access, c.last_access = 3.0, 1.0, 2.0
    heap = LazyHeap(lambda node: node.last_access, lambda node: node is not c)
    for node in (a, b, c):
        heap.push(node)
    b.last_access = 5.0  # its entry at 1.0 is now stale and is skipped
    assert heap.pop(limit=2.5) is None
    heap.push(b)
    assert [heap.pop(), heap.pop(), heap.pop()] == [a, b, None]


def test_a_part_whose_tail_changed_matches_its_first_blocks():
    from segcache.cache.keys import block_key
    tree = SegmentTree(1000)
    scope = scope_key("t", "m", "w", "float32", "tok")
    key = block_key("segment", "system")
    old = [PartSpec(key, (1, 2, 3), "s", part_key("segment", "system", "old")),
           PartSpec(key, (4, 5, 6), "s", part_key("segment", "system", "old"))]
    new = [PartSpec(key, (1, 2, 3), "s", part_key("segment", "system", "new")),
           PartSpec(key, (4, 5, 7), "s", part_key("segment", "system", "new"))]
    parent = tree.root(scope)
    for spec in old:
        parent = tree.insert(parent, spec, payload=None, num_bytes=3)
    result = tree.match(scope, new)
    assert [n.token_ids for n in result.nodes] == [(1, 2, 3)] and result.num_tokens == 3
    assert result.miss_reason is MissReason.NEW
    tree.check()
