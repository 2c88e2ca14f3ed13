"""SegmentTree.check(): recompute everything the tree maintains incrementally and compare."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from segcache.cache.keys import ChainKey, ScopeKey, chain_key, root_chain_key
from segcache.cache.node import MissReason, Node, ScopeTotals

HeapView = tuple[set[Node], Callable[[Node], bool]]  # (nodes with a valid heap entry, who must have one)


def check_tree(roots: Mapping[ScopeKey, Node], totals: Mapping[ScopeKey, ScopeTotals], used_bytes: int,
               num_nodes: int, tombstones: Mapping[ChainKey, MissReason], lru_candidates: HeapView,
               expiry_candidates: HeapView) -> None:
    """Raise AssertionError with a message naming the first broken invariant."""
    assert set(roots) == set(totals), f"scopes with a root {set(roots)} != scopes with totals {set(totals)}"
    recomputed = ScopeTotals()
    for scope, root in roots.items():
        _check_root(scope, root)
        scope_totals = _check_scope(root)
        assert scope_totals == totals[scope], f"scope {scope[:8]}: kept {totals[scope]}, recomputed {scope_totals}"
        recomputed.num_bytes += scope_totals.num_bytes
        recomputed.num_nodes += scope_totals.num_nodes
        for node in _descendants(root):
            _check_heaps(node, lru_candidates, expiry_candidates)
            assert node.chain_key not in tombstones, f"live node {node.name} also has a tombstone"
    assert used_bytes == recomputed.num_bytes, f"used_bytes {used_bytes} != recomputed {recomputed.num_bytes}"
    assert num_nodes == recomputed.num_nodes, f"num_nodes {num_nodes} != recomputed {recomputed.num_nodes}"


def _check_root(scope: ScopeKey, root: Node) -> None:
    assert root.scope == scope, f"root of scope {scope[:8]} says scope {root.scope[:8]}"
    assert root.parent is None and root.key is None, f"root of scope {scope[:8]} has a parent or a key"
    assert root.token_ids == () and root.start == 0 and root.num_bytes == 0, f"root of {scope[:8]} holds tokens"
    assert root.lock_count >= 1, f"root of scope {scope[:8]} is not locked (lock_count {root.lock_count})"
    assert root.chain_key == root_chain_key(scope), f"root of scope {scope[:8]} has a wrong chain key"


def _check_scope(root: Node) -> ScopeTotals:
    totals = ScopeTotals()
    seen: set[Node] = {root}
    for parent in [root, *_descendants(root)]:
        for child_id, child in parent.children.items():
            assert child not in seen, f"node {child.name} is reachable twice"
            seen.add(child)
            _check_child(parent, child_id, child)
            totals.num_bytes += child.num_bytes
            totals.num_nodes += 1
            totals.pinned_bytes += child.num_bytes if child.pinned else 0
    return totals


def _check_child(parent: Node, child_id: tuple, child: Node) -> None:
    name = child.name
    assert child_id == (child.key, child.token_ids), f"node {name} is filed under another key"
    assert isinstance(child.token_ids, tuple), f"node {name} token_ids is a {type(child.token_ids).__name__}"
    assert child.parent is parent, f"node {name} does not point back to its parent"
    assert child.scope == parent.scope, f"node {name} has scope {child.scope[:8]}, its parent {parent.scope[:8]}"
    assert child.start == parent.end, f"node {name} starts at {child.start}, its parent ends at {parent.end}"
    assert child.part_key is not None, f"node {name} does not say which part it belongs to"
    assert child.lock_count >= 0, f"node {name} has lock_count {child.lock_count}"
    assert child.num_bytes >= 0, f"node {name} has num_bytes {child.num_bytes}"
    expected_chain = chain_key(parent.chain_key, child.key, child.token_ids)  # type: ignore[arg-type]
    assert child.chain_key == expected_chain, f"node {name} has a wrong chain key"


def _check_heaps(node: Node, lru: HeapView, expiry: HeapView) -> None:
    for label, (in_heap, must_be) in (("LRU", lru), ("expiry", expiry)):
        assert not must_be(node) or node in in_heap, f"node {node.name} is missing from the {label} heap"


def _descendants(root: Node) -> list[Node]:
    found, stack = [], list(root.children.values())
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children.values())
    return found
