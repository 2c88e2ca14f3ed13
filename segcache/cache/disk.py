"""The disk tier: one file per cached node, found again by its chain key, LRU under its own budget.

    DIR/manifest.sqlite                      the manifest (cache/manifest.py)
    DIR/kv/<scope>/<chain_key>.kv            one node's KV, as cache/kvfile.py lays it out

The scope (which includes the tenant) is in the path, in the header and under the chain key, so one
tenant's request can never be served another's file. A load verifies all of it (magic, scope, chain key,
token ids, length, checksum); anything off is a miss and the file is removed: never wrong KV.

Writes are atomic (temp file, fsync, rename, then the manifest row) and happen on a writer thread, so
a request never waits for the disk; payloads arrive as a function that returns (meta, bytes), called on
that thread. No torch, no HTTP: the engine passes the codec.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from segcache.cache.kvfile import Encoded, header_fields, pack_header, unpack
from segcache.cache.manifest import Manifest, NodeRecord

log = logging.getLogger("segcache")


@dataclass(frozen=True)
class DiskHit:
    meta: dict
    payload: bytes
    record: NodeRecord


@dataclass
class DiskStats:
    writes: int = 0
    loads: int = 0
    corrupt: int = 0          # files that failed verification (each one a recompute, never wrong KV)
    evicted: int = 0          # files removed to stay under the disk budget
    write_errors: int = 0


class DiskTier:
    def __init__(self, directory: Path, capacity_bytes: int, manifest: Manifest | None = None,
                 clock: Callable[[], float] = time.time):
        self.directory = Path(directory)
        self.capacity_bytes = capacity_bytes
        (self.directory / "kv").mkdir(parents=True, exist_ok=True)
        self.manifest = manifest or Manifest(self.directory / "manifest.sqlite")
        self.stats = DiskStats()
        self._clock = clock
        self._cleared: dict[str, float] = {}     # scope -> when it was cleared: older queued writes are dropped
        self._recover()
        self._queue: queue.Queue[tuple | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="segcache-disk", daemon=True)
        self._writer.start()

    # ---------------------------------------------------------------- public

    def put(self, record: NodeRecord, encode: Callable[[], Encoded]) -> None:
        """Queue a node for writing; `encode()` runs on the writer thread."""
        self._queue.put((self._clock(), record, encode))

    def get(self, scope: str, chain_key: str, token_ids: tuple[int, ...]) -> DiskHit | None:
        """The node's verified payload, or None (absent, expired, or failing verification: then removed)."""
        record = self.manifest.node(chain_key)
        if record is None or record.scope != scope or record.token_ids != tuple(token_ids):
            return None
        if record.expires_at is not None and record.expires_at <= self._clock():
            self._remove(record)
            return None
        read = self._read(self._path(scope, chain_key), record)
        if read is None:
            self.stats.corrupt += 1
            log.warning("segcache: disk cache file for node %s failed verification; recomputing", chain_key[:12])
            self._remove(record)
            return None
        self.stats.loads += 1
        self.manifest.touch_nodes([chain_key], self._clock())
        return DiskHit(read[0], read[1], record)

    def has(self, chain_keys: list[str]) -> set[str]:
        return self.manifest.has_nodes(chain_keys)

    def touch(self, chain_keys: list[str]) -> None:
        self.manifest.touch_nodes(chain_keys, self._clock())

    def set_pinned(self, chain_keys: list[str], pinned: bool) -> None:
        self.manifest.set_pinned(chain_keys, pinned)

    def unpin_scope(self, scope: str) -> None:
        self.manifest.unpin_scope(scope)

    def clear_scope(self, scope: str) -> None:
        """Forget a scope's KV on disk, including writes still queued."""
        self._cleared[scope] = self._clock()
        self.flush()
        self.manifest.delete_scope(scope)
        shutil.rmtree(self.directory / "kv" / scope, ignore_errors=True)

    def used_bytes(self) -> int:
        return self.manifest.total_file_bytes()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every queued write is on disk (tests, benchmarks, shutdown)."""
        done = threading.Event()
        self._queue.put((None, None, done.set))
        done.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)

    # ---------------------------------------------------------------- writing

    def _write_loop(self) -> None:
        while (job := self._queue.get()) is not None:
            queued_at, record, encode = job
            if record is None:
                encode()   # a flush marker
                continue
            if self._cleared.get(record.scope, -1.0) >= queued_at:
                continue
            try:
                self._write(record, *encode())
            except Exception:   # noqa: BLE001 - a full or broken disk costs a recompute, never a request
                self.stats.write_errors += 1
                log.exception("segcache: could not write node %s to the disk cache", record.chain_key[:12])

    def _write(self, record: NodeRecord, meta: dict, payload: bytes) -> None:
        header = pack_header(_fields(record), meta, payload)
        path = self._path(record.scope, record.chain_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        with open(temp, "wb") as file:
            file.write(header)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        size = len(header) + len(payload)
        self.manifest.put_node(replace(record, file_bytes=size, last_access=self._clock()))
        self.stats.writes += 1
        self._evict_to_capacity()

    def _evict_to_capacity(self) -> None:
        overflow = self.manifest.total_file_bytes() - self.capacity_bytes
        while overflow > 0:
            victims = self.manifest.oldest_unpinned(16)
            if not victims:
                return
            for record in victims:
                self._remove(record)
                self.stats.evicted += 1
                overflow -= record.file_bytes
                if overflow <= 0:
                    return

    # ---------------------------------------------------------------- reading and housekeeping

    def _read(self, path: Path, record: NodeRecord) -> Encoded | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return unpack(data, _fields(record))

    def _remove(self, record: NodeRecord) -> None:
        self.manifest.delete_node(record.chain_key)
        self._path(record.scope, record.chain_key).unlink(missing_ok=True)

    def _recover(self) -> None:
        """After a crash: drop temp files, files without a manifest row, and rows without a file."""
        known = {(r.scope, r.chain_key): r for r in self.manifest.nodes()}
        for path in (self.directory / "kv").glob("*/*"):
            if path.suffix != ".kv" or (path.parent.name, path.stem) not in known:
                path.unlink(missing_ok=True)
        for (scope, chain_key), record in known.items():
            if not self._path(scope, chain_key).exists():
                self.manifest.delete_node(chain_key)

    def _path(self, scope: str, chain_key: str) -> Path:
        return self.directory / "kv" / scope / f"{chain_key}.kv"


def _fields(record: NodeRecord) -> dict:
    return header_fields(record.scope, record.chain_key, record.part_key, record.token_ids)
