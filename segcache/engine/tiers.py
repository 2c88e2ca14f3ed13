"""The cache manager's view of the tiers below RAM: spill a node, load a node, say where nodes live.

RAM is the tree itself. Below it, the disk tier (cache/disk.py) holds every node the tree computed:
nodes are written behind as they are cached (so a kill -9 keeps them, and an eviction from RAM finds
them already spilled), and a RAM miss at a position the disk holds loads the KV back instead of
recomputing it. This module turns tree nodes into disk records and payloads into bytes (kv_codec).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from segcache.cache.disk import DiskTier
from segcache.cache.keys import ScopeKey, chain_key
from segcache.cache.manifest import NodeRecord
from segcache.cache.node import Node, PartSpec
from segcache.engine import kv_codec

RAM, DISK = "ram", "disk"


@dataclass(frozen=True)
class Loaded:
    """A node's KV read back from a lower tier, ready to insert under its parent."""
    payload: object
    num_bytes: int
    expires_at: float | None
    pinned: bool
    tier: str


class Tiers:
    def __init__(self, disk: DiskTier, encode: Callable = kv_codec.encode, decode: Callable = kv_codec.decode):
        self.disk = disk
        self._encode, self._decode = encode, decode

    def spill(self, node: Node) -> None:
        """Queue a freshly computed node for the disk (its payload is never changed after insert)."""
        payload = node.payload
        record = NodeRecord(node.chain_key, node.scope, node.parent.chain_key, node.key, node.label,  # type: ignore[union-attr,arg-type]
                            node.token_ids, node.num_bytes, 0, node.expires_at, node.pinned, node.last_access)
        self.disk.put(record, lambda: self._encode(payload))

    def load(self, scope: ScopeKey, parent: Node, part: PartSpec) -> Loaded | None:
        """The KV of `part` under `parent` from the disk, verified; None on a miss."""
        key = chain_key(parent.chain_key, part.key, part.token_ids)
        hit = self.disk.get(scope, key, tuple(part.token_ids))
        if hit is None:
            return None
        try:
            payload = self._decode(hit.meta, hit.payload)
        except (ValueError, RuntimeError, KeyError, TypeError):
            return None
        return Loaded(payload, hit.record.num_bytes, hit.record.expires_at, hit.record.pinned, DISK)

    def locations(self, nodes: Sequence[Node]) -> dict[Node, list[str]]:
        """Where each node lives: always RAM (it is in the tree), and disk once its file is written."""
        on_disk = self.disk.has([n.chain_key for n in nodes])
        return {n: [RAM, DISK] if n.chain_key in on_disk else [RAM] for n in nodes}

    def touch(self, nodes: Sequence[Node]) -> None:
        if nodes:
            self.disk.touch([n.chain_key for n in nodes])

    def set_pinned(self, nodes: Sequence[Node], pinned: bool) -> None:
        self.disk.set_pinned([n.chain_key for n in nodes], pinned)

    def unpin_scope(self, scope: ScopeKey) -> None:
        self.disk.unpin_scope(scope)

    def clear_scope(self, scope: ScopeKey) -> None:
        self.disk.clear_scope(scope)

    def close(self) -> None:
        self.disk.close()
