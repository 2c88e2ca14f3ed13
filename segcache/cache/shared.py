"""The shared tier: node payloads in a Valkey/Redis store, so one replica serves KV another computed.

    key    segcache:kv:<scope>:<chain_key>     the scope (a hash of tenant, model, weights, dtype and
                                               tokenizer) is in every key: tenants never share a key
    value  the node's blob, as cache/kvfile.py lays it out (verified on every read)

Memory limit and eviction are the store's own (`maxmemory` + `allkeys-lru`): nothing here counts bytes.
The store is a cache, never a dependency: a store that is down or slow (socket timeout) makes a read a
miss and a write a no-op, with a warning and a counter, and is left alone for `retry_after_s` so a dead
store does not cost every request a timeout. Writes happen on a thread of their own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from segcache.cache.kvfile import Encoded, header_fields, pack_header, unpack

log = logging.getLogger("segcache")


@dataclass
class SharedStats:
    writes: int = 0
    loads: int = 0
    misses: int = 0
    corrupt: int = 0
    errors: int = 0       # calls that failed (store down, slow or refusing): each one a recompute
    skipped: int = 0      # calls not made because the store failed less than retry_after_s ago


class SharedTier:
    def __init__(self, url: str, timeout_s: float = 0.5, retry_after_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.retry_after_s = retry_after_s
        self.stats = SharedStats()
        self._clock = clock
        self._down_until = 0.0
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue()   # jobs for the writer
        self._writer = threading.Thread(target=self._write_loop, name="segcache-shared", daemon=True)
        self._writer.start()

    @staticmethod
    def key(scope: str, chain_key: str) -> str:
        return f"segcache:kv:{scope}:{chain_key}"

    def put(self, scope: str, chain_key: str, part_key: str, token_ids: tuple[int, ...],
            encode: Callable[[], Encoded]) -> None:
        """Queue a node for the store; `encode()` runs on the writer thread."""
        fields = header_fields(scope, chain_key, part_key, token_ids)
        self._queue.put(lambda: self._write_node(fields, encode))

    def get(self, scope: str, chain_key: str, part_key: str, token_ids: tuple[int, ...]) -> Encoded | None:
        data = self._call(lambda: self._client.get(self.key(scope, chain_key)))
        if data is None:
            self.stats.misses += 1
            return None
        found = unpack(data, header_fields(scope, chain_key, part_key, token_ids))
        if found is None:
            self.stats.corrupt += 1
            log.warning("segcache: shared cache entry for node %s failed verification; recomputing", chain_key[:12])
            return None
        self.stats.loads += 1
        return found

    def has(self, scope: str, chain_key: str) -> bool:
        return bool(self._call(lambda: self._client.exists(self.key(scope, chain_key))))

    def clear_scope(self, scope: str) -> None:
        self.flush()
        self._call(lambda: [self._client.delete(k) for k in self._client.scan_iter(self.key(scope, "*"))])

    def flush(self, timeout: float = 60.0) -> None:
        done = threading.Event()
        self._queue.put(done.set)
        done.wait(timeout)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._client.close()

    # ------------------------------------------------- plain values (segment texts, registry entries)

    def read(self, key: str) -> bytes | None:
        return self._call(lambda: self._client.get(key))

    def write(self, key: str, value: bytes) -> bool:
        """Now, on the caller's thread; False when the store is down (the caller goes on without it)."""
        return bool(self._call(lambda: self._client.set(key, value)))

    def write_later(self, key: str, value: bytes) -> None:
        self._queue.put(lambda: self._call(lambda: self._client.set(key, value)))

    def keys(self, pattern: str) -> list[str]:
        found = self._call(lambda: [k.decode() for k in self._client.scan_iter(pattern)])
        return found or []

    def delete(self, *keys: str) -> None:
        if keys:
            self._call(lambda: self._client.delete(*keys))

    # ------------------------------------------------- private

    def _write_loop(self) -> None:
        while (job := self._queue.get()) is not None:
            job()

    def _write_node(self, fields: dict, encode: Callable[[], Encoded]) -> None:
        try:
            meta, payload = encode()
        except Exception:   # noqa: BLE001 - a payload that cannot be encoded is just not shared
            log.exception("segcache: could not encode node %s for the shared cache", fields["chain_key"][:12])
            return
        blob = pack_header(fields, meta, payload) + payload
        if self._call(lambda: self._client.set(self.key(fields["scope"], fields["chain_key"]), blob)):
            self.stats.writes += 1

    def _call(self, operation: Callable[[], object]) -> object | None:
        """operation() or None when the store is down, slow or refusing (then left alone for a while)."""
        if self._clock() < self._down_until:
            self.stats.skipped += 1
            return None
        try:
            return operation()
        except redis.RedisError as exc:
            self.stats.errors += 1
            self._down_until = self._clock() + self.retry_after_s
            log.warning("segcache: shared cache %s unavailable (%s); recomputing, retrying in %.0f s",
                        self.url, exc, self.retry_after_s)
            return None
