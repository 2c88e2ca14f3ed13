"""Who runs next: a FIFO queue, one sequence in prefill at a time, up to max_batch running.

Each engine step asks `schedule()` for one Step: a prefill share (of the oldest admitted sequence still
prefilling) and one decode token for every sequence in decode. Sequences begin prefill one at a time in
arrival order; one whose prompt the step's prefill forward completes moves to `prefilled` at once, so the
next may begin and join that forward (engine/engine.py `_prefill_share`, which keeps the reuse of running
them one after another).

Admission: a waiting sequence starts prefilling when none is, the running count stays within
max_batch and the running KV buffers within max_running_kv_bytes (a lone sequence always runs).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

from segcache.engine.sequence import Sequence


@dataclass(frozen=True)
class Step:
    prefill: Sequence | None           # run one prefill unit of this sequence
    decode: list[Sequence]             # then one token for each of these, in one forward


@dataclass(frozen=True)
class QueueSnapshot:
    """For /metrics and /health: per-tenant waiting counts and positions (0 = next to start)."""
    waiting: dict[str, int]
    first_position: dict[str, int]
    running: int
    running_kv_bytes: int

    @property
    def depth(self) -> int:
        return sum(self.waiting.values())


class Scheduler:
    def __init__(self, max_batch: int, max_running_kv_bytes: int):
        self.max_batch, self.max_running_kv_bytes = max_batch, max_running_kv_bytes
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None
        self.prefilled: list[Sequence] = []   # within a step: prompts the step's prefill forward completes
        self.decoding: list[Sequence] = []
        self._lock = threading.Lock()   # only for snapshot() from other threads; the engine thread mutates

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.prefilled or self.decoding)

    def add(self, sequence: Sequence) -> None:
        with self._lock:
            self.waiting.append(sequence)

    def schedule(self) -> Step:
        if self.prefilling is None and self.waiting and self._can_admit(self.waiting[0]):
            with self._lock:
                self.prefilling = self.waiting.popleft()
        return Step(self.prefilling, list(self.decoding))

    def prefill_planned(self, sequence: Sequence) -> None:
        """The prefilling sequence's last blocks are in this step's forward: the next waiting one may begin."""
        with self._lock:
            if self.prefilling is sequence:
                self.prefilling = None
            self.prefilled.append(sequence)

    def start_decoding(self, sequence: Sequence) -> None:
        """The sequence's prefill is done and it has tokens to generate."""
        with self._lock:
            if sequence in self.prefilled:
                self.prefilled.remove(sequence)
            else:
                self.prefilling = None
            self.decoding.append(sequence)

    def remove(self, sequence: Sequence) -> None:
        """The sequence finished, failed or was cancelled, wherever it was."""
        with self._lock:
            if self.prefilling is sequence:
                self.prefilling = None
            elif sequence in self.prefilled:
                self.prefilled.remove(sequence)
            elif sequence in self.decoding:
                self.decoding.remove(sequence)
            elif sequence in self.waiting:
                self.waiting.remove(sequence)

    def cancelled(self) -> list[Sequence]:
        return [s for s in self._all() if s.cancelled.is_set()]

    def snapshot(self) -> QueueSnapshot:
        with self._lock:
            waiting = list(self.waiting)
            running = self._running()
        first: dict[str, int] = {}
        for position, sequence in enumerate(waiting):
            first.setdefault(sequence.tenant, position)
        return QueueSnapshot(dict(Counter(s.tenant for s in waiting)), first, len(running),
                             sum(s.kv_bytes for s in running))

    def _can_admit(self, sequence: Sequence) -> bool:
        running = self._running()
        if not running:
            return True
        return (len(running) < self.max_batch
                and sum(s.kv_bytes for s in running) + sequence.kv_bytes <= self.max_running_kv_bytes)

    def _running(self) -> list[Sequence]:
        return ([self.prefilling] if self.prefilling else []) + self.prefilled + self.decoding

    def _all(self) -> list[Sequence]:
        return list(self.waiting) + self._running()
