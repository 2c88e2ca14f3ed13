"""One request, start to finish: build the prompt, match the tree, prefill part by part, decode.

Runs only on the engine's worker thread; the tree lock is held only around tree calls, never
around a forward pass, so inspection endpoints stay responsive during a long prefill.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import torch

from segcache.cache.keys import ScopeKey
from segcache.cache.tree import Eviction, MatchResult, Node, PartSpec, SegmentTree
from segcache.config import ServeConfig
from segcache.engine.constraint import Constraint, GrammarCompiler
from segcache.engine.model import LoadedModel
from segcache.engine.prompt import Part, Prompt, PromptError, build_chat_prompt, build_completion_prompt
from segcache.engine.request import EngineRequest, Finished, PromptReport, Receipt
from segcache.engine.runner import PrefillState, Runner, kv_num_bytes
from segcache.engine.decoding import Decoder

Emit = Callable[[object], None]


class Executor:
    def __init__(self, loaded: LoadedModel, tree: SegmentTree, tree_lock: threading.RLock, config: ServeConfig,
                 scope_of: Callable[[str], ScopeKey], on_evict: Callable[[list[Eviction]], None]):
        self.loaded, self.tree, self.tree_lock, self.config = loaded, tree, tree_lock, config
        self.scope_of, self.on_evict = scope_of, on_evict
        self.runner = Runner(loaded, threads=config.threads)
        self.grammars = GrammarCompiler(loaded.tokenizer, loaded.eos_token_ids, loaded.model.config.vocab_size)

    def run(self, request: EngineRequest, emit: Emit, cancelled: Callable[[], bool], queued_at: float) -> None:
        started = time.perf_counter()
        prompt = self.build_prompt(request)
        # A grammar that cannot be enforced is the client's error: raise it before any work.
        constraint = self.grammars.compile(request.grammar) if request.grammar is not None else None
        state, report = self._prefill(request, prompt, queue_s=started - queued_at)
        emit(report)
        if request.kind != "warm":
            emit(self._decode(request, state, emit, cancelled, constraint))
        with self.tree_lock:
            self.on_evict(self.tree.evict_to_capacity())

    def build_prompt(self, request: EngineRequest) -> Prompt:
        tokenizer, segments = self.loaded.tokenizer, [s.text for s in request.segments]
        if request.kind == "completion":
            prompt = build_completion_prompt(tokenizer, segments, request.prompt or "", request.reject_split)
        else:
            prompt = build_chat_prompt(tokenizer, segments, list(request.messages),
                                       add_generation_prompt=request.kind == "chat", reject_split=request.reject_split)
        num_tokens = sum(len(p.token_ids) for p in prompt.parts)
        if num_tokens >= self.loaded.max_context:
            raise PromptError(f"the prompt has {num_tokens} tokens; this model's context is "
                              f"{self.loaded.max_context} tokens including the reply. Shorten the prompt",
                              "context_length_exceeded", param="messages", status=413)
        if request.kind != "warm" and request.sampling.max_tokens > self.loaded.max_context:
            raise PromptError(f"max_tokens is {request.sampling.max_tokens}, but this model's context holds "
                              f"{self.loaded.max_context} tokens in all; ask for fewer", "invalid_max_tokens",
                              param="max_tokens")
        if request.kind != "warm" and num_tokens == 0:
            raise PromptError("the prompt is empty", "empty_prompt", param="prompt")
        return prompt

    # ---------------------------------------------------------------- prefill

    def _prefill(self, request: EngineRequest, prompt: Prompt, queue_s: float) -> tuple[PrefillState, PromptReport]:
        started = time.perf_counter()
        specs = [PartSpec(p.key, p.token_ids, p.label) for p in prompt.parts]
        # The last part of a generating request is always computed: its logits start the reply.
        matchable = specs if request.kind == "warm" else specs[:-1]
        scope = self.scope_of(request.tenant)
        with self.tree_lock:
            self.on_evict(self.tree.evict(0))
            match = self.tree.match(scope, matchable) if self.config.cache_enabled else MatchResult([], 0, None)
            self.tree.lock(match.nodes)
            self.tree.touch(match.nodes)
            self._refresh_ttl(request, prompt, match.nodes)
            parent = self.tree.root(scope)
        held = list(match.nodes)
        try:
            capacity = sum(len(p.token_ids) for p in prompt.parts) + (
                request.sampling.max_tokens if request.kind != "warm" else 0)
            state = self.runner.start([n.payload for n in match.nodes], min(capacity, self.loaded.max_context))
            parent = match.nodes[-1] if match.nodes else parent
            caching = self.config.cache_enabled
            for index in range(len(match.nodes), len(prompt.parts)):
                kv = self.runner.prefill_part(state, prompt.parts[index].token_ids)
                if caching:
                    node = self._insert(parent, specs[index], kv, self._ttl(request, prompt.parts[index]))
                    caching = node is not None
                    if node is not None:
                        parent = node
                        held.append(node)
            chain = held if caching else []
            if request.pin and chain:
                self._pin(scope, chain)
        finally:
            with self.tree_lock:
                self.tree.unlock(held)
        return state, self._report(request, prompt, match, chain, time.perf_counter() - started, queue_s)

    def _insert(self, parent: Node, spec: PartSpec, kv: torch.Tensor, ttl: float | None) -> Node | None:
        """None when the parent left the tree meanwhile (the tenant cleared its cache): the request
        still completes, its remaining parts are just not cached."""
        with self.tree_lock:
            if not self.tree.contains(parent):
                return None
            # Make room first, so the budget holds during the request too (only this request's own
            # locked chain can push past it, and only until it finishes).
            overflow = self.tree.used_bytes + kv_num_bytes(kv) - self.tree.capacity_bytes
            if overflow > 0:
                self.on_evict(self.tree.evict(overflow))
            node = self.tree.insert(parent, spec, kv, kv_num_bytes(kv), ttl_seconds=ttl)
            self.tree.lock([node])
            self.tree.touch([node], hit=False)
        return node

    def _pin(self, scope, chain: list[Node]) -> None:
        with self.tree_lock:
            needed = sum(n.num_bytes for n in chain if not n.pinned)
            quota = self.config.pin_bytes_per_tenant
            if self.tree.pinned_bytes(scope) + needed > quota:
                raise PromptError(
                    f"pinning these segments needs {needed} more bytes, but this tenant already pins "
                    f"{self.tree.pinned_bytes(scope)} of its {quota} bytes; they are cached but not pinned. "
                    "Unpin or delete other pinned segments, or warm without pin", "pin_quota_exceeded",
                    param="pin", status=409)
            self.tree.pin(chain)

    def _ttl(self, request: EngineRequest, part: Part) -> float | None:
        if part.segment_index is not None and request.segments[part.segment_index].ttl_seconds is not None:
            return request.segments[part.segment_index].ttl_seconds
        return self.config.default_ttl

    def _refresh_ttl(self, request: EngineRequest, prompt: Prompt, nodes: list[Node]) -> None:
        """A hit keeps a segment alive for another ttl (sliding expiry)."""
        for node, part in zip(nodes, prompt.parts):
            ttl = self._ttl(request, part)
            if ttl is not None:
                self.tree.set_ttl([node], ttl)

    # ---------------------------------------------------------------- reporting

    def _report(self, request: EngineRequest, prompt: Prompt, match: MatchResult, chain: list[Node],
                prefill_s: float, queue_s: float) -> PromptReport:
        num_hit = len(match.nodes)
        receipts, parts = [], []
        missed_segment = False   # has a segment before this one been computed?
        for index, part in enumerate(prompt.parts):
            cached = len(part.token_ids) if index < num_hit else 0
            segment = request.segments[part.segment_index].text if part.segment_index is not None else None
            parts.append({"kind": part.kind, "role": part.role, "id": segment and segment.id,
                          "hash": segment and segment.hash, "text": part.text, "tokens": len(part.token_ids),
                          "cached_tokens": cached})
            if segment is not None:
                receipts.append(_receipt(segment, len(part.token_ids), index < num_hit, missed_segment, match))
                missed_segment = missed_segment or index >= num_hit
        segment_nodes = [n for n, p in zip(chain, prompt.parts) if p.kind in ("head", "segment")]
        expiries = [n.expires_at for n in chain if n.expires_at is not None]
        return PromptReport(
            prompt_tokens=sum(len(p.token_ids) for p in prompt.parts), cached_tokens=match.num_tokens,
            receipts=tuple(receipts), parts=tuple(parts), chain_hash=_chain_hash(segment_nodes),
            expires_at=min(expiries) if expiries else None, prefill_s=prefill_s, queue_s=queue_s)

    # ---------------------------------------------------------------- decode

    def _decode(self, request: EngineRequest, state: PrefillState, emit: Emit, cancelled: Callable[[], bool],
                constraint: Constraint | None = None) -> Finished:
        limit = min(request.sampling.max_tokens, self.loaded.max_context - state.num_tokens)
        decoder = Decoder(request.sampling, self.loaded.tokenizer, self.loaded.eos_token_ids, limit,
                          keep_logits=request.keep_logits, constraint=constraint)
        logits = state.last_logits
        while not decoder.done:
            for event in decoder.step(logits):
                emit(event)
            if cancelled():
                decoder.cancel()
            if not decoder.done:
                logits = self.runner.decode_step(state, decoder.last_token)
        tail, finished = decoder.finish()
        for event in tail:
            emit(event)
        return finished


def _receipt(segment, tokens: int, hit: bool, after_missed_segment: bool, match: MatchResult) -> Receipt:
    """Why a segment was computed: its own miss, or an earlier segment's (prefix_miss).

    A miss in template markup alone (the head, on a new scope) is reported as the segment's own.
    """
    if hit:
        return Receipt(segment.id, segment.hash, tokens, tokens, "hit", None)
    if after_missed_segment:
        reason = "prefix_miss"
    else:
        reason = match.miss_reason.value if match.miss_reason is not None else "new"
    return Receipt(segment.id, segment.hash, tokens, 0, "computed", reason)


def _chain_hash(nodes: list[Node]) -> str | None:
    if not nodes:
        return None
    digest = hashlib.sha256()
    for node in nodes:
        digest.update(node.key.encode())
    return "sha256:" + digest.hexdigest()
