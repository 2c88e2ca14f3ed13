"""Random sequences of engine-like operations keep every tree invariant, and eviction keeps its promises."""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from segcache.cache import MissReason, Node, NodeLockedError, PartSpec, SegmentTree, part_key, scope_key
from segcache.cache.keys import block_key
from segcache.cache.tree import PinQuotaError, SharePolicy

CAPACITY = 100
SCOPES = [scope_key(tenant, "m", "w", "float32", "t") for tenant in ("acme", "globex")]
KEYS = [part_key("segment", "system", f"block-{index}") for index in range(4)]

# A part is (key index, token variant). Requests are prefixes of three conversations that share their first
# parts, so chains are often (partly) cached; a "drift" gives one part its other token variant (a boundary miss).
CONVERSATIONS = [[0, 1, 2, 3], [0, 1, 3, 2], [0, 2, 1, 3]]


def make_request(conversation: int, length: int, drift: int | None) -> list[tuple[int, int]]:
    keys = CONVERSATIONS[conversation][:length]
    return [(key, int(position == drift)) for position, key in enumerate(keys)]


parts_strategy = st.builds(make_request, st.integers(0, 2), st.integers(0, 4),
                           st.one_of(st.none(), st.none(), st.integers(0, 3)))
scopes = st.sampled_from(SCOPES)
ttls = st.sampled_from([None, None, None, 0, 1, 5, 30])


def to_specs(parts: list[tuple[int, int]]) -> list[PartSpec]:
    return [PartSpec(KEYS[key], (10 * key,) * (variant + 1) + (variant,), f"b{key}.{variant}")
            for key, variant in parts]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TreeMachine(RuleBasedStateMachine):
    shares: SharePolicy | None = None  # None: one global LRU
    to_specs = staticmethod(to_specs)  # a request's parts as the tree sees them

    @initialize()
    def start(self) -> None:
        self.clock = FakeClock()
        self.tree = SegmentTree(CAPACITY, clock=self.clock, max_tombstones=8, shares=self.shares)
        self.held: list[list[Node]] = []  # chains locked by "running requests"

    # -- requests ---------------------------------------------------------------------------------------

    @rule(scope=scopes, parts=parts_strategy, num_bytes=st.integers(0, 15), ttl=ttls, keep_locked=st.booleans())
    def serve(self, scope, parts, num_bytes, ttl, keep_locked) -> None:
        """What the engine does: match, lock, insert the rest, touch, then release (or keep running)."""
        specs = self.to_specs(parts)
        result = self.tree.match(scope, specs)
        assert_match_agrees(specs, result, self.clock.now)
        chain = list(result.nodes)
        self.tree.lock(chain)
        parent = chain[-1] if chain else self.tree.root(scope)
        for spec in specs[len(chain):]:
            parent = self.tree.insert(parent, spec, payload=object(), num_bytes=num_bytes, ttl_seconds=ttl)
            self.tree.lock([parent])
            chain.append(parent)
        assert [node.token_ids for node in chain] == [spec.token_ids for spec in specs]
        self.tree.touch(chain)
        if keep_locked:
            self.held.append(chain)
        else:
            self.tree.unlock(chain)

    @rule(scope=scopes, parts=parts_strategy)
    def match(self, scope, parts) -> None:
        specs = self.to_specs(parts)
        before = snapshot(self.tree)
        assert_match_agrees(specs, self.tree.match(scope, specs), self.clock.now)
        assert snapshot(self.tree) == before, "match() modified the tree"

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 10))
    def release(self, index) -> None:
        self.tree.unlock(self.held.pop(index % len(self.held)))

    @precondition(lambda self: self.tree.num_nodes)
    @rule(pick=st.integers(0, 10**6), whole_chain=st.booleans(), hit=st.booleans())
    def touch(self, pick, whole_chain, hit) -> None:
        self.tree.touch(self.pick_nodes(pick, whole_chain), hit=hit)

    @precondition(lambda self: self.tree.num_nodes)
    @rule(pick=st.integers(0, 10**6), whole_chain=st.booleans(), pin=st.booleans())
    def pin(self, pick, whole_chain, pin) -> None:
        if not pin:
            self.tree.unpin(self.pick_nodes(pick, whole_chain))
            return
        before = snapshot(self.tree)
        try:
            self.tree.pin(self.pick_nodes(pick, whole_chain))
        except PinQuotaError:
            assert snapshot(self.tree) == before, "a refused pin changed the tree"

    @precondition(lambda self: self.tree.num_nodes)
    @rule(pick=st.integers(0, 10**6), whole_chain=st.booleans(), ttl=ttls)
    def set_ttl(self, pick, whole_chain, ttl) -> None:
        self.tree.set_ttl(self.pick_nodes(pick, whole_chain), ttl)

    def pick_nodes(self, pick: int, whole_chain: bool) -> list[Node]:
        nodes = all_nodes(self.tree)
        node = nodes[pick % len(nodes)]
        return node.chain() if whole_chain else [node]

    @rule(seconds=st.sampled_from([0, 0.5, 1, 5, 30]))
    def advance_clock(self, seconds) -> None:
        self.clock.now += seconds

    # -- eviction ---------------------------------------------------------------------------------------

    @rule(num_bytes=st.integers(0, 120))
    def evict(self, num_bytes) -> None:
        self.checked_evict(lambda: self.tree.evict(num_bytes), num_bytes)

    @rule()
    def evict_to_capacity(self) -> None:
        self.checked_evict(self.tree.evict_to_capacity, max(0, self.tree.used_bytes - CAPACITY))
        assert self.tree.used_bytes <= CAPACITY or not lru_candidates(self.tree)
        if not self.held and not any(node.pinned for node in all_nodes(self.tree)):
            assert self.tree.used_bytes <= CAPACITY

    @rule(scope=scopes)
    def remove_scope(self, scope) -> None:
        scope_bytes = self.tree.scope_bytes(scope)
        if any(node.scope == scope for chain in self.held for node in chain):
            try:
                self.tree.remove_scope(scope)
            except NodeLockedError:
                return
            raise AssertionError("remove_scope removed a locked node")
        assert self.tree.remove_scope(scope) == scope_bytes
        assert scope not in self.tree.scopes() and self.tree.scope_nodes(scope) == 0

    def checked_evict(self, evict, num_bytes) -> None:
        now = self.clock.now
        nodes = all_nodes(self.tree)
        doomed_by_expiry = {node for node in nodes if any(n.is_expired(now) for n in node.chain())}
        candidates = lru_candidates(self.tree)
        used_before = self.tree.used_bytes
        evictions = evict()
        removed = [node for node in nodes if node.payload is None]
        assert sum(e.num_bytes for e in evictions) == used_before - self.tree.used_bytes
        assert len(evictions) == len(removed)
        assert {e.reason for e in evictions} <= {MissReason.EVICTED, MissReason.EXPIRED}
        by_lru = [node for node in removed if node not in doomed_by_expiry]
        assert not any(node.pinned for node in by_lru), "a pinned node was removed to make room"
        survivors = [node for node in candidates if node.payload is not None]
        for scope in SCOPES if self.shares else [None]:  # LRU inside a scope (with shares) or across all
            taken = [n for n in by_lru if scope in (None, n.scope)]
            kept = [n for n in survivors if scope in (None, n.scope)]
            if taken and kept:  # a greedy LRU never passes over an older candidate
                assert max(n.last_access for n in taken) <= min(n.last_access for n in kept)
        assert not removable_expired(self.tree, now), "an expired, unlocked node survived evict()"
        if sum(e.num_bytes for e in evictions) < num_bytes:
            assert not lru_candidates(self.tree), "evict() stopped early with candidates left"

    # -- invariants -------------------------------------------------------------------------------------

    @invariant()
    def tree_is_consistent(self) -> None:
        self.tree.check()
        assert self.tree.pinned_bytes(SCOPES[0]) + self.tree.pinned_bytes(SCOPES[1]) <= CAPACITY

    @invariant()
    def locked_nodes_stay(self) -> None:
        assert all(node.payload is not None for chain in self.held for node in chain)


def assert_match_agrees(specs: list[PartSpec], result, now: float) -> None:
    nodes, num_tokens, reason = result
    assert not any(node.is_expired(now) for node in nodes), "an expired node matched"
    assert len(nodes) <= len(specs)
    assert [node.token_ids for node in nodes] == [spec.token_ids for spec in specs[:len(nodes)]]
    assert [node.key for node in nodes] == [spec.key for spec in specs[:len(nodes)]]
    assert all(node.parent is (nodes[i - 1] if i else node.parent) for i, node in enumerate(nodes))
    assert not nodes or nodes[0].parent.is_root
    assert num_tokens == sum(len(node.token_ids) for node in nodes)
    assert (reason is None) == (len(nodes) == len(specs))


def all_nodes(tree: SegmentTree) -> list[Node]:
    return [node for scope in tree.scopes() for _, node in tree.iter_nodes(scope)]


def snapshot(tree: SegmentTree) -> list[tuple]:
    return [(id(n), n.last_access, n.hits, n.expires_at, n.lock_count, n.pinned) for n in all_nodes(tree)]


def lru_candidates(tree: SegmentTree) -> list[Node]:
    return [node for node in all_nodes(tree) if node.is_leaf and not node.lock_count and not node.pinned]


def removable_expired(tree: SegmentTree, now: float) -> list[Node]:
    return [node for node in all_nodes(tree)
            if node.is_expired(now) and not any(n.lock_count for n in node.post_order())]


TreeMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_tree_machine = TreeMachine.TestCase


class SharedTreeMachine(TreeMachine):
    """The same operations with per-scope shares: a fair share of 50 bytes each, pins up to 30."""

    shares = SharePolicy(floor_bytes=30)


SharedTreeMachine.TestCase.settings = TreeMachine.TestCase.settings
test_shared_tree_machine = SharedTreeMachine.TestCase


BLOCK_TOKENS = 3


def to_block_specs(parts: list[tuple[int, int]]) -> list[PartSpec]:
    """Each part as the engine caches it: blocks of BLOCK_TOKENS tokens keyed by kind and role, matched by
    token ids; a drifted part changes its last token only, so its first blocks still match."""
    specs = []
    for key, variant in parts:
        tokens = tuple(10 * key + offset for offset in range(7))[:-1] + (100 + variant,)
        whole = part_key("segment", "system", f"block-{key}.{variant}")
        for start in range(0, len(tokens), BLOCK_TOKENS):
            specs.append(PartSpec(block_key("segment", "system"), tokens[start:start + BLOCK_TOKENS], f"b{key}", whole))
    return specs


class BlockTreeMachine(TreeMachine):
    """The same operations over chains of blocks: parts that differ in their tail share their first blocks."""

    to_specs = staticmethod(to_block_specs)


BlockTreeMachine.TestCase.settings = TreeMachine.TestCase.settings
test_block_tree_machine = BlockTreeMachine.TestCase
