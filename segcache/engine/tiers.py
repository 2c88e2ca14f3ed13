"""The cache manager's view of the tiers below RAM: spill a node, load a node, say where nodes live.

RAM is the tree itself. Below it, the disk tier (cache/disk.py) and the shared tier (cache/shared.py,
a Valkey/Redis store other replicas use too) each hold every node the tree computed: nodes are written
behind as they are cached (so a kill -9 keeps them, and an eviction from RAM finds them already
spilled), and a RAM miss at a position a tier holds loads the KV back (disk first, then shared) instead
of recomputing it. This module turns tree nodes into records and payloads into bytes (kv_codec).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from segcache.cache.disk import DiskTier
from segcache.cache.keys import ScopeKey, chain_key
from segcache.cache.manifest import NodeRecord
from segcache.cache.node import Node, PartSpec
from segcache.cache.shared import SharedTier
from segcache.engine import kv_codec

RAM, DISK, SHARED = "ram", "disk", "shared"


@dataclass(frozen=True)
class Loaded:
    """A node's KV read back from a lower tier, ready to insert under its parent."""
    payload: object
    num_bytes: int
    expires_at: float | None
    pinned: bool
    tier: str


class Tiers:
    def __init__(self, disk: DiskTier | None, shared: SharedTier | None = None,
                 encode: Callable = kv_codec.encode, decode: Callable = kv_codec.decode):
        self.disk, self.shared = disk, shared
        self._encode, self._decode = encode, decode

    def spill(self, node: Node) -> None:
        """Queue a freshly computed node for each tier (its payload is never changed after insert)."""
        payload = node.payload
        if self.disk is not None:
            record = NodeRecord(node.chain_key, node.scope, node.parent.chain_key, node.key, node.label,  # type: ignore[union-attr,arg-type]
                                node.token_ids, node.num_bytes, 0, node.expires_at, node.pinned, node.last_access)
            self.disk.put(record, lambda: self._encode(payload))
        if self.shared is not None:
            self.shared.put(node.scope, node.chain_key, node.key, node.token_ids, lambda: self._encode(payload))  # type: ignore[arg-type]

    def load(self, scope: ScopeKey, parent: Node, part: PartSpec) -> Loaded | None:
        """The KV of `part` under `parent` from the disk, else the shared store, verified; None on a miss."""
        key = chain_key(parent.chain_key, part.key, part.token_ids)
        if self.disk is not None and (hit := self.disk.get(scope, key, tuple(part.token_ids))) is not None:
            payload = self._decoded(hit.meta, hit.payload)
            if payload is not None:
                return Loaded(payload, hit.record.num_bytes, hit.record.expires_at, hit.record.pinned, DISK)
        if self.shared is not None and (found := self.shared.get(scope, key, part.key, tuple(part.token_ids))):
            payload = self._decoded(*found)
            if payload is not None:
                return Loaded(payload, payload.numel() * payload.element_size(), None, False, SHARED)
        return None

    def locations(self, nodes: Sequence[Node]) -> dict[Node, list[str]]:
        """Where each node lives: always RAM (it is in the tree), disk and shared once written there."""
        on_disk = self.disk.has([n.chain_key for n in nodes]) if self.disk is not None else set()
        where = {n: [RAM, DISK] if n.chain_key in on_disk else [RAM] for n in nodes}
        if self.shared is not None:
            for node in nodes:
                if self.shared.has(node.scope, node.chain_key):
                    where[node].append(SHARED)
        return where

    def touch(self, nodes: Sequence[Node]) -> None:
        if nodes and self.disk is not None:
            self.disk.touch([n.chain_key for n in nodes])

    def set_pinned(self, nodes: Sequence[Node], pinned: bool) -> None:
        if self.disk is not None:
            self.disk.set_pinned([n.chain_key for n in nodes], pinned)

    def unpin_scope(self, scope: ScopeKey) -> None:
        if self.disk is not None:
            self.disk.unpin_scope(scope)

    def clear_scope(self, scope: ScopeKey) -> None:
        if self.disk is not None:
            self.disk.clear_scope(scope)
        if self.shared is not None:
            self.shared.clear_scope(scope)

    def _decoded(self, meta: dict, data: bytes):
        try:
            return self._decode(meta, data)
        except (ValueError, RuntimeError, KeyError, TypeError):
            return None
