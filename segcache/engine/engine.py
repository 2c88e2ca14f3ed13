"""The engine: scheduler + cache manager + model runner, driven by one worker thread.

One step of the worker reads like this (see engine/scheduler.py for who runs):

    take new requests (build each prompt; a bad one fails at once)
    drop cancelled sequences                   (a client that went away costs nothing after this step)
    step = scheduler.schedule()
    run one prefill unit of step.prefill       (a part, or a chunk of a long one: engine/units.py)
    run one decode token for all of step.decode, in ONE forward when batching is verified

One worker keeps the arithmetic deterministic (a fixed thread count per forward shape, one forward
at a time). HTTP handlers talk to it through `stream()` (async) and tests and benchmarks through
`run()` (blocking).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from segcache.cache.disk import DiskTier
from segcache.cache.keys import ScopeKey, scope_key
from segcache.cache.persistent import PersistentSegmentStore
from segcache.cache.shared_names import SharedSegmentStore
from segcache.cache.segments import SegmentStore
from segcache.cache.shared import SharedTier
from segcache.cache.tree import SegmentTree, SharePolicy
from segcache.config import ServeConfig
from segcache.engine.cache_manager import CacheManager
from segcache.engine.executor import Executor, PlannedSpan
from segcache.engine.fused_decode import first_variant_row as first_fused_variant_row
from segcache.engine.invariance import BatchingVerdict, decide_batching
from segcache.engine.model import LoadedModel, load_model
from segcache.engine.request import EngineRequest, Event
from segcache.engine.runner import Runner
from segcache.engine.scheduler import QueueSnapshot, Scheduler
from segcache.engine.sequence import Sequence
from segcache.engine.tiers import Tiers

@dataclass
class _Job:
    request: EngineRequest
    emit: Callable[[object], None]
    queued_at: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)


def _to_loop(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, cancelled: threading.Event):
    """A job's emit for a client on `loop`. Once that loop is closed nobody reads the request any more: it is
    cancelled (gone within one engine step), and the engine thread, which serves everyone, never fails on it."""
    def emit(event: object) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:                     # the loop is closed
            cancelled.set()
    return emit


def _share_policy(config: ServeConfig) -> SharePolicy | None:
    share = config.tenant_cache_share
    return SharePolicy(share_bytes=share if isinstance(share, int) else None, lru_only=share == "off",
                       pin_quota_bytes=config.pin_bytes_per_tenant)


class _Done:
    """End of a job's event stream."""


@dataclass
class DecodeStats:
    """Decode work since start: steps, rows (one token of one sequence each) and seconds in the forwards.
    rows / seconds is the engine's decode throughput with prefill and waiting left out."""
    steps: int = 0
    rows: int = 0
    seconds: float = 0.0


class Engine:
    def __init__(self, config: ServeConfig, loaded: LoadedModel | None = None, tree: SegmentTree | None = None):
        """`loaded` and `tree` let tests share a model, or one tree between two configurations.

        Raises BatchingRefused when --batching on and the start-up check finds batch-variant rows.
        """
        self.config = config
        self.loaded: LoadedModel
        self._tenants_by_scope: dict[ScopeKey, str] = {}
        # --disk-cache: KV files, and a manifest that also keeps the registry and segment texts
        self.disk = DiskTier(Path(config.disk_cache), config.disk_cache_bytes) if config.disk_cache else None
        self.shared = SharedTier(config.shared_cache) if config.shared_cache else None   # --shared-cache redis://
        tiers = Tiers(self.disk, self.shared) if self.disk or self.shared else None
        self.cache = CacheManager(tree or SegmentTree(config.cache_bytes, clock=time.time, shares=_share_policy(config)),
                                  self.scope, config.cache_enabled, tiers)
        texts = (PersistentSegmentStore(self.disk.manifest, config.segment_store_bytes) if self.disk
                 else SegmentStore(config.segment_store_bytes))
        # --shared-cache: texts another replica was sent resolve here too (hash-only references)
        self.segment_store = SharedSegmentStore(texts, self.shared) if self.shared else texts
        self.scheduler = Scheduler(config.max_batch, config.max_running_kv_bytes)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closing = False
        self.decode_stats = DecodeStats()
        # The model is loaded, checked and run on the worker thread alone: each thread that runs torch's
        # parallel ops gets its own OpenMP team, and with two teams on a 2-core machine OpenMP stops
        # spinning between parallel regions, which made every forward of the worker ~1.5x slower.
        started: queue.Queue[BaseException | None] = queue.Queue()
        self._worker = threading.Thread(target=self._start_and_work, args=(loaded, started), name="segcache-engine",
                                        daemon=True)
        self._worker.start()
        failure = started.get()
        if failure is not None:
            self._worker.join()
            raise failure

    def _start_and_work(self, loaded: LoadedModel | None, started: queue.Queue) -> None:
        try:
            self._start(loaded)
        except BaseException as exc:
            started.put(exc)
            return
        started.put(None)
        self._work()

    def _start(self, loaded: LoadedModel | None) -> None:
        config = self.config
        # Threads are chosen per forward by its shape only (see Runner): a given part always runs on
        # the same count, since the count can change the order of reductions.
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self.loaded = loaded or load_model(config.model, config.dtype, config.model_id, config.weights)
        runner = Runner(self.loaded, threads=torch.get_num_threads())
        self.kernel_paths = runner.kernel_paths()
        self.batching: BatchingVerdict = _batching_verdict(config, runner)
        self.spans = _check_spans(runner, config.prefill_span_tokens)
        merge_anywhere = runner.linears_merge(config.block_tokens)    # AMX: no check needed
        if self.spans.span_tokens and merge_anywhere:
            what = "linears and attention" if runner.lean.native_prefill else "linears"
            idle = max(config.idle_prefill_span_tokens, self.spans.span_tokens)
            self.spans = SpanVerdict(self.spans.span_tokens, f"{self.spans.reason}; the {what} run over the whole "
                                     "span in one call each (AMX kernels: a row's bits never depend on the call); "
                                     f"up to {idle} tokens while no other request decodes or waits", idle)
        elif self.spans.span_tokens:
            merges = runner.check_span_merges(config.block_tokens, self.spans.span_tokens)
            if merges is not None:
                self.spans = SpanVerdict(self.spans.span_tokens, f"{self.spans.reason}; {merges.summary()}")
        if self.spans.span_tokens:
            merges = runner.check_small_merges(config.block_tokens)
            if merges is not None and merges.small:
                self.spans = SpanVerdict(self.spans.span_tokens, f"{self.spans.reason}; blocks of up to "
                                         f"{merges.small_limit} tokens share their quantized projections' calls "
                                         "(start-up check: each row's bits of a call of its own)",
                                         self.spans.idle_tokens)
            most = max(config.block_tokens, self.spans.span_tokens, self.spans.idle_tokens)
            merges = None if merge_anywhere else runner.check_dense_merges(config.block_tokens, most)
            if merges is not None and merges.dense:
                self.spans = SpanVerdict(self.spans.span_tokens, f"{self.spans.reason}; the blocks on the dense "
                                         f"weight share one call per linear, up to {merges.dense_limit} tokens "
                                         "(start-up check: a row's bits in calls of any size)", self.spans.idle_tokens)
        self.executor = Executor(self.loaded, self.cache, replace(
            config, threads=torch.get_num_threads(), prefill_span_tokens=self.spans.span_tokens,
            idle_prefill_span_tokens=max(self.spans.idle_tokens, self.spans.span_tokens)), runner)

    def scope(self, tenant: str) -> ScopeKey:
        scope = model_scope(self.loaded, tenant)
        self._tenants_by_scope.setdefault(scope, tenant)
        return scope

    def tenant_of_scope(self, scope: ScopeKey) -> str | None:
        """The tenant whose scope this is, once scope(tenant) has been asked."""
        return self._tenants_by_scope.get(scope)

    @property
    def tenants(self) -> list[str]:
        """Tenants that have reached the engine."""
        return sorted(set(self._tenants_by_scope.values()))

    @property
    def tree(self) -> SegmentTree:
        """The cache tree, for tests that check its invariants; everything else goes through `cache`."""
        return self.cache.tree

    @property
    def evictions(self) -> list:
        """Eviction observers (metrics); kept on the cache manager."""
        return self.cache.observers

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize() + self.scheduler.snapshot().depth

    def queue_snapshot(self) -> QueueSnapshot:
        return self.scheduler.snapshot()

    def queued(self, tenant: str) -> int:
        """This tenant's requests not yet running: new ones and those waiting for a running slot."""
        with self._jobs.mutex:
            new = sum(1 for job in self._jobs.queue if job is not None and job.request.tenant == tenant)
        return new + self.scheduler.snapshot().waiting.get(tenant, 0)

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=30)
        for tier in (self.disk, self.shared):
            if tier is not None:
                tier.close()

    # ---------------------------------------------------------------- clients

    async def stream(self, request: EngineRequest) -> AsyncIterator[Event]:
        """Yield the request's events; an engine error is raised here. Closing the iterator cancels the
        request: it stops costing anything within one engine step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        job = _Job(request, _to_loop(loop, events, cancelled), cancelled=cancelled)
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
        while not (self._closing and not self.scheduler.has_work):
            self._take_jobs(block=not self.scheduler.has_work)
            for sequence in self.scheduler.cancelled():
                self._cancel(sequence)
            step = self.scheduler.schedule()
            if step.prefill is not None:
                self._prefill_share(step.prefill, idle=not step.decode and not self.scheduler.waiting)
            if step.decode:
                self._decode(step.decode)

    def _take_jobs(self, block: bool) -> None:
        """Move new requests into the scheduler; wait for one only when there is nothing else to do."""
        while not self._closing:
            try:
                job = self._jobs.get(block=block)
            except queue.Empty:
                return
            if job is None:
                self._closing = True
                return
            self._admit(job)
            block = False

    def _admit(self, job: _Job) -> None:
        try:
            prompt = self.executor.build_prompt(job.request)
            constraint = self.executor.constraint(job.request)
        except Exception as exc:  # delivered to the waiting client, never kills the worker
            job.emit(exc)
            job.emit(_Done())
            return
        self.scheduler.add(Sequence(job.request, prompt, job.emit, self.executor.kv_bytes(job.request, prompt),
                                    job.queued_at, job.cancelled, constraint=constraint))

    def _prefill_share(self, sequence: Sequence, idle: bool = False) -> None:
        """A step's prefill: up to --prefill-span-tokens (at least one block), so running streams wait at
        most that much prefill; up to --idle-prefill-span-tokens when no request decodes nor waits (`idle`):
        no one waits on the step then. (With requests waiting, a larger span would bundle more of them into
        one long forward whose end they all wait for: `bench concurrent` at 16 agents had TTFT p50 1.18 s
        against 0.60 s.) When a prompt's last blocks leave room, the next waiting request begins and its blocks that fit
        join the same forward: short turns that arrive together (agents answering at
        once) share one pass over the weights, each row with the bits of its own forward
        (Runner.prefill_spans). A request that would compute a block that an earlier one in the forward
        computes too (the same blocks from its start, as agents behind one new system prompt) begins after
        that forward instead, in a forward of its own in the same step, and matches the block from the
        tree: as requests that run one after another do."""
        config = self.executor.config
        limit = config.idle_prefill_span_tokens if idle else config.prefill_span_tokens
        room = max(limit, config.block_tokens)
        first = True
        while sequence is not None:
            spans: list[PlannedSpan] = []
            while sequence is not None:
                if sequence.prefill is None and any(
                        span.computes_block_of(sequence, self.executor.config.block_tokens) for span in spans):
                    break                                # it begins after this forward
                try:
                    if sequence.prefill is None:
                        self.executor.begin_prefill(sequence)
                    span = self.executor.next_span(sequence, None if first else room, limit)
                except Exception as exc:  # delivered to its client; the step goes on with the others
                    self._fail(sequence, exc)
                    sequence = self.scheduler.schedule().prefill
                    continue
                first = False
                if span.blocks:
                    spans.append(span)
                    room -= len(span.token_ids)
                if not span.completes:                   # more next step (or its next block did not fit)
                    sequence = None
                    break
                if span.blocks:
                    self.scheduler.prefill_planned(sequence)
                else:
                    self._prefilled(sequence)            # a warm request whose every block was cached
                sequence = self.scheduler.schedule().prefill if room > 0 else None
            self._run_prefill(spans)

    def _run_prefill(self, spans: list[PlannedSpan]) -> None:
        """The step's prefill forward, then each sequence's blocks cached and, where its prompt is done, its
        report and first token."""
        if not spans:
            return
        try:
            self.executor.runner.prefill_spans([(s.sequence.state, s.token_ids, s.sizes) for s in spans])
        except Exception as exc:
            for span in spans:
                self._fail(span.sequence, exc)
            return
        for span in spans:
            try:
                self.executor.store_span(span)
            except Exception as exc:
                self._fail(span.sequence, exc)
                continue
            if span.completes:
                self._prefilled(span.sequence)

    def _prefilled(self, sequence: Sequence) -> None:
        """The prompt is prefilled: report it, then end a request that generates nothing or start decoding."""
        try:
            sequence.emit(self.executor.finish_prefill(sequence))
            if not sequence.generates:
                self._end(sequence)
                return
            sequence.decoder = self.executor.new_decoder(sequence)
            self.scheduler.start_decoding(sequence)
            self._choose(sequence, sequence.state.last_logits)
        except Exception as exc:
            self._fail(sequence, exc)

    def _decode(self, sequences: list[Sequence]) -> None:
        runner = self.executor.runner
        started = time.perf_counter()
        try:
            if self.batching.batched:
                rows = runner.decode_batch([s.state for s in sequences], [s.decoder.last_token for s in sequences])
            else:   # one sequence per forward, still one token each per step: streams progress together
                rows = [runner.decode_step(s.state, s.decoder.last_token) for s in sequences]
        except Exception as exc:
            for sequence in sequences:
                self._fail(sequence, exc)
            return
        stats = self.decode_stats
        stats.steps, stats.rows, stats.seconds = (stats.steps + 1, stats.rows + len(sequences),
                                                  stats.seconds + time.perf_counter() - started)
        for sequence, logits in zip(sequences, rows):
            self._choose(sequence, logits)

    def _choose(self, sequence: Sequence, logits: torch.Tensor) -> None:
        """The decoder picks the next token from `logits`; finish the sequence if that was its last."""
        decoder = sequence.decoder
        for event in decoder.step(logits):
            sequence.emit(event)
        if sequence.cancelled.is_set():
            decoder.cancel()
        if decoder.done:
            tail, finished = decoder.finish()
            for event in tail:
                sequence.emit(event)
            sequence.emit(finished)
            self._end(sequence)

    def _cancel(self, sequence: Sequence) -> None:
        if sequence.decoder is not None:
            sequence.decoder.cancel()
            sequence.emit(sequence.decoder.finish()[1])
        self._end(sequence)

    def _fail(self, sequence: Sequence, exc: Exception) -> None:
        sequence.emit(exc)
        self._end(sequence)

    def _end(self, sequence: Sequence) -> None:
        """The sequence leaves the engine: release anything it holds, drop its KV buffer, end its stream."""
        if sequence.prefill is not None and sequence.prefill.held:
            self.executor.end_prefill(sequence)
        self.scheduler.remove(sequence)
        sequence.state = None
        sequence.emit(_Done())


def _batching_verdict(config: ServeConfig, runner: Runner) -> BatchingVerdict:
    """The start-up batch-invariance check, run once per loaded model and setting (it runs the model's
    projections: seconds) and shared by every engine on that model, as its lean forward is."""
    key = f"batching {config.batching} {config.max_batch}"
    if key not in runner.loaded.prepared:
        fused = runner.lean.fused if runner.can_batch else None
        runner.loaded.prepared[key] = decide_batching(
            config.batching, _distinct_projections(runner.lean) if runner.can_batch else None, runner.loaded.dtype,
            config.max_batch, None if fused is None else partial(first_fused_variant_row, runner.lean))
    return runner.loaded.prepared[key]


def _distinct_projections(forward) -> list:
    """One projection of each kind (every layer has the same shapes and kernels), and the output head:
    what the start-up batch-invariance check runs."""
    return [(name, linear) for name, linear in forward.projections()
            if name.startswith("layers.0.") or not name.startswith("layers.")]


def model_scope(loaded: LoadedModel, tenant: str) -> ScopeKey:
    """A tenant's cache scope under this model: new weights, weight format, dtype or
    tokenizer mean a new scope."""
    return scope_key(tenant, loaded.model_id, loaded.weights_fingerprint, loaded.numerics_name,
                     loaded.tokenizer_fingerprint)


@dataclass(frozen=True)
class SpanVerdict:
    span_tokens: int    # what a prefill forward may span here (0: one block per forward)
    reason: str         # why, for the start-up log and /health
    idle_tokens: int = 0    # what it may span while no other request decodes or waits


def _check_spans(runner: Runner, span_tokens: int) -> SpanVerdict:
    """Spanned prefill only where the start-up check finds a span gives every block its own forward's bits."""
    if span_tokens == 0:
        return SpanVerdict(0, "--prefill-span-tokens 0: one block per forward")
    if runner.lean is None:
        return SpanVerdict(0, "this model runs on the library's forward: one block per forward")
    if not runner.spans_agree():
        return SpanVerdict(0, "the start-up check found a span's KV differing from one forward per block: "
                              "one block per forward")
    return SpanVerdict(span_tokens, f"forwards span whole blocks up to {span_tokens} tokens (start-up check: "
                                    "bit-identical to one forward per block)")
