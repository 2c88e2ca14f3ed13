"""One sequence's work, a step at a time: build the prompt, match the tree, prefill block by block, decode.

The scheduler decides which sequence runs; this module does the work of one prefill unit and keeps
the prompt report. The tree is reached only through the cache manager, never around a forward.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass

from segcache.cache.tree import MatchResult, Node, PinQuotaError
from segcache.config import ServeConfig
from segcache.engine.cache_manager import Acquired, CacheManager
from segcache.engine.blocks import Block, cached_tokens_per_part, complete_parts
from segcache.engine.decoding import Decoder
from segcache.engine.constraint import Constraint, GrammarCompiler
from segcache.engine.model import LoadedModel
from segcache.engine.prompt import Part, Prompt, PromptError, build_chat_prompt, build_completion_prompt
from segcache.engine.request import EngineRequest, PromptReport, Receipt
from segcache.engine.runner import Runner, kv_bytes_per_token, kv_num_bytes
from segcache.engine.sequence import PrefillProgress, Sequence


@dataclass(frozen=True)
class PlannedSpan:
    """A sequence's blocks in a step's prefill forward."""
    sequence: Sequence
    blocks: list[Block]
    token_ids: tuple[int, ...]
    start: int              # the position of its first token
    completes: bool         # the last blocks of the prompt
    first_block: int = 0    # the index of its first block among the prompt's

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(b.num_tokens for b in self.blocks)

    def computes_block_of(self, sequence: Sequence, block_tokens: int) -> bool:
        """Whether `sequence`, not begun, would compute one of this span's blocks too: same tenant and the
        same blocks from the start up to one of them (it should wait and match them from the tree instead)."""
        if sequence.tenant != self.sequence.tenant or not self.blocks:
            return False
        mine = self.sequence.prefill.blocks
        theirs = sequence.blocks(block_tokens)
        same = 0
        while (same < min(len(mine), len(theirs)) and mine[same].spec.key == theirs[same].spec.key
               and mine[same].spec.token_ids == theirs[same].spec.token_ids):
            same += 1
        return same > self.first_block


class Executor:
    def __init__(self, loaded: LoadedModel, cache: CacheManager, config: ServeConfig, runner: Runner):
        self.loaded, self.cache, self.config, self.runner = loaded, cache, config, runner
        self.bytes_per_token = kv_bytes_per_token(loaded)
        self.grammars = GrammarCompiler(loaded.tokenizer, loaded.eos_token_ids, loaded.model.config.vocab_size)

    def constraint(self, request: EngineRequest) -> Constraint | None:
        """The reply's grammar, compiled; one that cannot be enforced is the client's error, raised before any work."""
        return self.grammars.compile(request.grammar) if request.grammar is not None else None

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

    def kv_bytes(self, request: EngineRequest, prompt: Prompt) -> int:
        """What the sequence will hold while running (its admission cost): its KV buffer, and where decode packs
        the buffer's whole key blocks (Runner.packs_buffers) as many bytes again for the tokens the tree will
        not hold: the reply's, or every token when nothing is cached. (A prompt's blocks go to the tree,
        whose packs running sequences share.)"""
        capacity = self._capacity(request, prompt)
        packed = 0
        if self.runner.packs_buffers:
            prompt_tokens = sum(len(p.token_ids) for p in prompt.parts)
            packed = capacity if not self.cache.enabled else capacity - min(capacity, prompt_tokens)
        return self.bytes_per_token * (capacity + packed)

    # ---------------------------------------------------------------- prefill

    def begin_prefill(self, sequence: Sequence) -> None:
        """Match and lock the cached chain of blocks, load it into a fresh KV buffer, plan the blocks left."""
        request, prompt = sequence.request, sequence.prompt
        blocks = sequence.blocks(self.config.block_tokens)
        specs = [b.spec for b in blocks]
        # The last block of a generating request is always computed: its logits start the reply.
        matchable = specs if not sequence.generates else specs[:-1]
        pin_cost = self._pin_cost(prompt) if request.pin and self.cache.enabled else None
        ttls = [self._ttl(request, prompt.parts[b.part_index]) for b in blocks]
        acquired = self.cache.acquire(request.tenant, matchable, ttls, pin_cost)
        nodes = acquired.match.nodes
        sequence.prefill = PrefillProgress(acquired, blocks, deque(blocks[len(nodes):]), list(nodes),
                                           acquired.parent, self.cache.enabled)
        try:
            sequence.state = self.runner.start([n.payload for n in nodes], self._capacity(request, prompt))
        except BaseException:
            self.end_prefill(sequence)
            raise

    def next_span(self, sequence: Sequence, room: int | None = None, limit: int | None = None) -> PlannedSpan:
        """Take the sequence's next span of blocks for this step's forward; `room`: the tokens left in the
        engine step, which the span must fit (no blocks if the next one does not); `limit`: the tokens a
        forward may span (default --prefill-span-tokens). The forward is the engine's
        (Runner.prefill_spans), then `store_span` caches the blocks."""
        progress = sequence.prefill
        if not progress.units or (room is not None and progress.units[0].num_tokens > room):
            return PlannedSpan(sequence, [], (), sequence.state.num_tokens, not progress.units)
        first = len(progress.blocks) - len(progress.units)
        blocks = self._next_span(progress.units, room, limit)
        ids = tuple(t for b in blocks for t in sequence.prompt.parts[b.part_index].token_ids[b.start:b.end])
        return PlannedSpan(sequence, blocks, ids, sequence.state.num_tokens, not progress.units, first)

    def store_span(self, span: PlannedSpan) -> None:
        """After the forward: cache each block of the span as its own node."""
        start = span.start
        for block in span.blocks:
            if span.sequence.prefill.caching:
                self._cache_block(span.sequence, block, start)
            start += block.num_tokens

    def _next_span(self, units: deque[Block], room: int | None, limit: int | None = None) -> list[Block]:
        """The next blocks one forward computes: whole blocks up to `limit` (--prefill-span-tokens) or `room`,
        whichever is less (at least one). Which blocks share a forward never changes their bits."""
        limit = self.config.prefill_span_tokens if limit is None else limit
        limit = limit if room is None else min(room, limit)
        span = [units.popleft()]
        num_tokens = span[0].num_tokens
        while units and num_tokens + units[0].num_tokens <= limit:
            num_tokens += units[0].num_tokens
            span.append(units.popleft())
        return span

    def _cache_block(self, sequence: Sequence, block: Block, start: int) -> None:
        """Store the block's KV (positions start..start + its tokens) as a node under the last one."""
        progress, part = sequence.prefill, sequence.prompt.parts[block.part_index]
        kv = self.runner.part_kv(sequence.state, start, start + block.num_tokens)
        node = self.cache.extend(progress.parent, block.spec, kv, kv_num_bytes(kv), self._ttl(sequence.request, part))
        progress.caching = node is not None
        if node is not None:
            progress.parent = node
            progress.held.append(node)
            self.runner.read_from_block(sequence.state, node.payload, start)

    def finish_prefill(self, sequence: Sequence) -> PromptReport:
        """Pin if asked, release the chain, and report what was cached and computed."""
        progress = sequence.prefill
        try:
            chain = progress.held if progress.caching else []
            if sequence.request.pin and chain:
                self.cache.pin(progress.acquired.scope, chain)
            elif sequence.request.unpin and chain:
                self.cache.unpin(chain)
        finally:
            self.end_prefill(sequence)
        queue_s = progress.started - sequence.queued_at
        return self._report(sequence.request, sequence.prompt, progress.blocks, progress.acquired, chain,
                            time.perf_counter() - progress.started, queue_s)

    def end_prefill(self, sequence: Sequence) -> None:
        """Release the chain the sequence holds (also when it fails or is cancelled mid-prefill)."""
        if sequence.prefill is not None and sequence.prefill.held:
            self.cache.release(sequence.prefill.held)
            sequence.prefill.held = []
        self.cache.evict_to_capacity()

    def new_decoder(self, sequence: Sequence) -> Decoder:
        request, state = sequence.request, sequence.state
        limit = min(request.sampling.max_tokens, self.loaded.max_context - state.num_tokens)
        return Decoder(request.sampling, self.loaded.tokenizer, self.loaded.eos_token_ids, limit,
                       keep_logits=request.keep_logits, constraint=sequence.constraint)

    def _pin_cost(self, prompt: Prompt):
        """The pin bytes a warm with `pin: true` needs, given what matched: checked before anything changes,
        so a refusal stores nothing."""
        def cost(match: MatchResult) -> int:
            new_tokens = sum(len(p.token_ids) for p in prompt.parts) - match.num_tokens
            return new_tokens * self.bytes_per_token + sum(n.num_bytes for n in match.nodes if not n.pinned)
        return cost

    def _capacity(self, request: EngineRequest, prompt: Prompt) -> int:
        generated = request.sampling.max_tokens if request.kind != "warm" else 0
        return min(sum(len(p.token_ids) for p in prompt.parts) + generated, self.loaded.max_context)

    def _ttl(self, request: EngineRequest, part: Part) -> float | None:
        if part.segment_index is not None and request.segments[part.segment_index].ttl_seconds is not None:
            return request.segments[part.segment_index].ttl_seconds
        return request.ttl_seconds if request.ttl_seconds is not None else self.config.default_ttl

    # ---------------------------------------------------------------- reporting

    def _report(self, request: EngineRequest, prompt: Prompt, blocks: list[Block], acquired: Acquired,
                chain: list[Node], prefill_s: float, queue_s: float) -> PromptReport:
        match, tiers = acquired.match, acquired.tiers
        cached = cached_tokens_per_part(blocks, len(prompt.parts), len(match.nodes))
        num_hit = complete_parts(blocks, len(match.nodes))
        part_tiers = _tier_per_part(blocks, tiers, len(prompt.parts))
        receipts, parts = [], []
        missed_segment = False   # has a segment before this one been computed, wholly or in part?
        for index, part in enumerate(prompt.parts):
            segment = request.segments[part.segment_index].text if part.segment_index is not None else None
            parts.append({"kind": part.kind, "role": part.role, "id": segment and segment.id,
                          "hash": segment and segment.hash, "text": part.text, "tokens": len(part.token_ids),
                          "cached_tokens": cached[index]})
            if segment is not None:
                receipts.append(_receipt(segment, len(part.token_ids), cached[index], part_tiers[index],
                                         index < num_hit, missed_segment, match))
                missed_segment = missed_segment or index >= num_hit
        num_complete = complete_parts(blocks, len(chain))
        segment_keys = [p.key for p in prompt.parts[:num_complete] if p.kind in ("head", "segment")]
        expiries = [n.expires_at for n in chain if n.expires_at is not None]
        return PromptReport(
            prompt_tokens=sum(len(p.token_ids) for p in prompt.parts), cached_tokens=match.num_tokens,
            receipts=tuple(receipts), parts=tuple(parts), chain_hash=_chain_hash(segment_keys),
            expires_at=min(expiries) if expiries else None, prefill_s=prefill_s, queue_s=queue_s,
            tier_hits=_tier_hits(match.nodes, tiers))


def _tier_per_part(blocks: list[Block], tiers: tuple[str, ...], num_parts: int) -> list[str | None]:
    """Where each part's cached blocks came from: the farthest tier any of them was loaded from
    (ram < disk < shared), None when none was cached."""
    order = {"ram": 0, "disk": 1, "shared": 2}
    per_part: list[str | None] = [None] * num_parts
    for block, tier in zip(blocks, tiers):
        current = per_part[block.part_index]
        if current is None or order.get(tier, 0) > order.get(current, 0):
            per_part[block.part_index] = tier
    return per_part


def _tier_hits(nodes: list[Node], tiers: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(tier, tokens, bytes) summed per tier over the matched chain, for the per-tier metrics."""
    totals: dict[str, tuple[int, int]] = {}
    for node, tier in zip(nodes, tiers):
        tokens, num_bytes = totals.get(tier, (0, 0))
        totals[tier] = (tokens + len(node.token_ids), num_bytes + node.num_bytes)
    return tuple((tier, tokens, num_bytes) for tier, (tokens, num_bytes) in totals.items())


def _receipt(segment, tokens: int, cached: int, tier: str | None, hit: bool, after_missed_segment: bool,
             match: MatchResult) -> Receipt:
    """Hit (every block), partial (its first blocks; the reason is why the next one missed) or computed:
    for its own miss, or an earlier segment's (prefix_miss). `tier`: where its cached blocks came from.

    A miss in template markup alone (the head, on a new scope) is reported as the segment's own.
    """
    if hit:
        return Receipt(segment.id, segment.hash, tokens, tokens, "hit", None, tier)
    if cached:
        reason = match.miss_reason.value if match.miss_reason is not None else "new"
        return Receipt(segment.id, segment.hash, tokens, cached, "partial", reason, tier)
    if after_missed_segment:
        reason = "prefix_miss"
    else:
        reason = match.miss_reason.value if match.miss_reason is not None else "new"
    return Receipt(segment.id, segment.hash, tokens, 0, "computed", reason)


def _chain_hash(keys: list[str]) -> str | None:
    if not keys:
        return None
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
    return "sha256:" + digest.hexdigest()
