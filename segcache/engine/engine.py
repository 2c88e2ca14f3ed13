"""The engine: owns the model, the cache tree and one worker thread; requests queue and complete.

One worker keeps the arithmetic deterministic (a fixed thread count, one forward at a time) and
makes the tree single-writer. HTTP handlers talk to it through `stream()` (async) and tests and
benchmarks through `run()` (blocking).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from segcache.cache.keys import ScopeKey, scope_key
from segcache.cache.segments import SegmentStore
from segcache.cache.tree import Eviction, SegmentTree
from segcache.config import ServeConfig
from segcache.engine.executor import Executor
from segcache.engine.model import LoadedModel, load_model
from segcache.engine.request import EngineRequest, Event


@dataclass
class _Job:
    request: EngineRequest
    emit: Callable[[object], None]
    queued_at: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)


class _Done:
    """End of a job's event stream."""


class Engine:
    def __init__(self, config: ServeConfig, loaded: LoadedModel | None = None, tree: SegmentTree | None = None):
        """`loaded` and `tree` let tests share a model, or one tree between two configurations."""
        self.config = config
        # Threads are chosen per forward by its length only (see Runner): a given part always runs on
        # the same count, since the count can change the order of reductions.
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self.loaded = loaded or load_model(config.model, config.dtype, config.model_id, config.weights)
        self.tree = tree or SegmentTree(config.cache_bytes, clock=time.time)
        self.tree_lock = threading.RLock()
        self.segment_store = SegmentStore(config.segment_store_bytes)
        self.evictions: list[Callable[[list[Eviction]], None]] = []   # observers (metrics)
        self.executor = Executor(self.loaded, self.tree, self.tree_lock,
                                 dataclasses.replace(config, threads=torch.get_num_threads()), self.scope, self._on_evict)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="segcache-engine", daemon=True)
        self._worker.start()

    def scope(self, tenant: str) -> ScopeKey:
        loaded = self.loaded
        return scope_key(tenant, loaded.model_id, loaded.weights_fingerprint, loaded.numerics_name,
                         loaded.tokenizer_fingerprint)

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=30)

    # ---------------------------------------------------------------- clients

    async def stream(self, request: EngineRequest) -> AsyncIterator[Event]:
        """Yield the request's events; an engine error is raised here. Closing the iterator cancels decode."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = _Job(request, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        self._jobs.put(job)
        try:
            while not isinstance(event := await events.get(), _Done):
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            job.cancelled.set()

    def run(self, request: EngineRequest) -> list[Event]:
        """Blocking: all events of one request (raises the engine's error, if any)."""
        events: queue.Queue = queue.Queue()
        self._jobs.put(_Job(request, events.put))
        collected = []
        while not isinstance(event := events.get(), _Done):
            if isinstance(event, BaseException):
                raise event
            collected.append(event)
        return collected

    # ---------------------------------------------------------------- worker

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self.executor.run(job.request, job.emit, job.cancelled.is_set, job.queued_at)
            except Exception as exc:  # delivered to the waiting client, never kills the worker
                job.emit(exc)
            finally:
                job.emit(_Done())

    def _on_evict(self, evictions: list[Eviction]) -> None:
        for observer in self.evictions:
            observer(evictions)
