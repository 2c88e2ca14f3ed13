"""The disk tier's manifest: what a restarted server needs to find its KV, names and texts again.

An embedded SQLite database (stdlib sqlite3, WAL journal) beside the KV files:

    nodes     one row per KV file: chain key (its position), scope, parent's chain key, part key, label,
              token ids, bytes, expiry, pin, last use           -> the tree's shape, and LRU on disk
    registry  (tenant, name) -> content, hash, tokens, ttl, pin -> named segments
    segments  (tenant, hash) -> content                         -> hash-only references

A row is written only after its file was renamed into place, so a row always names a complete file
(a file without a row, left by a kill between the two, is deleted at start-up). No torch, no HTTP.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    chain_key TEXT PRIMARY KEY, scope TEXT NOT NULL, parent TEXT NOT NULL, part_key TEXT NOT NULL,
    label TEXT, token_ids TEXT NOT NULL, num_bytes INTEGER NOT NULL, file_bytes INTEGER NOT NULL,
    expires_at REAL, pinned INTEGER NOT NULL DEFAULT 0, last_access REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_by_scope ON nodes (scope);
CREATE INDEX IF NOT EXISTS nodes_by_age ON nodes (pinned, last_access);
CREATE TABLE IF NOT EXISTS registry (
    tenant TEXT NOT NULL, name TEXT NOT NULL, content TEXT NOT NULL, hash TEXT NOT NULL,
    tokens INTEGER NOT NULL, ttl_seconds REAL, pin INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS segments (
    tenant TEXT NOT NULL, hash TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (tenant, hash));
"""


@dataclass(frozen=True)
class NodeRecord:
    """One KV file as the manifest knows it."""
    chain_key: str
    scope: str
    parent: str            # the parent's chain key (a scope root's for a top node)
    part_key: str
    label: str | None
    token_ids: tuple[int, ...]
    num_bytes: int         # the node's KV bytes in RAM
    file_bytes: int        # the file's size on disk (header included): what the disk budget counts
    expires_at: float | None
    pinned: bool
    last_access: float


@dataclass(frozen=True)
class RegistryRecord:
    tenant: str
    name: str
    content: str
    hash: str
    tokens: int
    ttl_seconds: float | None
    pin: bool
    updated_at: float


class Manifest:
    """Thread-safe: one connection, one lock (the engine worker, the disk writer and HTTP handlers share it)."""

    def __init__(self, path: Path):
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: a crash loses at most the last commits
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- nodes

    def put_node(self, record: NodeRecord) -> None:
        self._run("INSERT OR REPLACE INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  (record.chain_key, record.scope, record.parent, record.part_key, record.label,
                   json.dumps(record.token_ids), record.num_bytes, record.file_bytes, record.expires_at,
                   int(record.pinned), record.last_access))

    def node(self, chain_key: str) -> NodeRecord | None:
        rows = self._rows("SELECT * FROM nodes WHERE chain_key = ?", (chain_key,))
        return _node(rows[0]) if rows else None

    def nodes(self, scope: str | None = None) -> list[NodeRecord]:
        if scope is None:
            return [_node(row) for row in self._rows("SELECT * FROM nodes", ())]
        return [_node(row) for row in self._rows("SELECT * FROM nodes WHERE scope = ?", (scope,))]

    def has_nodes(self, chain_keys: Iterable[str]) -> set[str]:
        keys = list(chain_keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            marks = ",".join("?" * len(batch))
            found |= {row[0] for row in self._rows(f"SELECT chain_key FROM nodes WHERE chain_key IN ({marks})", batch)}
        return found

    def touch_nodes(self, chain_keys: Iterable[str], now: float) -> None:
        self._many("UPDATE nodes SET last_access = ? WHERE chain_key = ?", [(now, key) for key in chain_keys])

    def set_pinned(self, chain_keys: Iterable[str], pinned: bool) -> None:
        self._many("UPDATE nodes SET pinned = ? WHERE chain_key = ?", [(int(pinned), key) for key in chain_keys])

    def unpin_scope(self, scope: str) -> None:
        self._run("UPDATE nodes SET pinned = 0 WHERE scope = ?", (scope,))

    def delete_node(self, chain_key: str) -> None:
        self._run("DELETE FROM nodes WHERE chain_key = ?", (chain_key,))

    def delete_scope(self, scope: str) -> None:
        self._run("DELETE FROM nodes WHERE scope = ?", (scope,))

    def total_file_bytes(self) -> int:
        return self._rows("SELECT COALESCE(SUM(file_bytes), 0) FROM nodes", ())[0][0]

    def oldest_unpinned(self, limit: int) -> list[NodeRecord]:
        """Least recently used first: the disk tier's eviction order. Pinned nodes are never taken."""
        return [_node(row) for row in
                self._rows("SELECT * FROM nodes WHERE pinned = 0 ORDER BY last_access LIMIT ?", (limit,))]

    # ---------------------------------------------------------------- registry and segment texts

    def put_registry(self, record: RegistryRecord) -> None:
        self._run("INSERT OR REPLACE INTO registry VALUES (?,?,?,?,?,?,?,?)",
                  (record.tenant, record.name, record.content, record.hash, record.tokens, record.ttl_seconds,
                   int(record.pin), record.updated_at))

    def delete_registry(self, tenant: str, name: str) -> None:
        self._run("DELETE FROM registry WHERE tenant = ? AND name = ?", (tenant, name))

    def registry(self) -> list[RegistryRecord]:
        return [RegistryRecord(t, n, c, h, tokens, ttl, bool(pin), updated) for t, n, c, h, tokens, ttl, pin, updated
                in self._rows("SELECT * FROM registry ORDER BY updated_at", ())]

    def put_segment(self, tenant: str, hash_: str, content: str) -> None:
        self._run("INSERT OR IGNORE INTO segments VALUES (?,?,?)", (tenant, hash_, content))

    def delete_segment(self, tenant: str, hash_: str) -> None:
        self._run("DELETE FROM segments WHERE tenant = ? AND hash = ?", (tenant, hash_))

    def delete_segments(self, tenant: str) -> None:
        self._run("DELETE FROM segments WHERE tenant = ?", (tenant,))

    def segments(self) -> list[tuple[str, str, str]]:
        """(tenant, hash, content), oldest first (rowid order), so reloading keeps the LRU order roughly."""
        return list(self._rows("SELECT tenant, hash, content FROM segments ORDER BY rowid", ()))

    # ---------------------------------------------------------------- private

    def _run(self, sql: str, args: tuple) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")

    def _rows(self, sql: str, args) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()


def _node(row: tuple) -> NodeRecord:
    chain, scope, parent, part, label, tokens, num_bytes, file_bytes, expires, pinned, last = row
    return NodeRecord(chain, scope, parent, part, label, tuple(json.loads(tokens)), num_bytes, file_bytes,
                      expires, bool(pinned), last)
