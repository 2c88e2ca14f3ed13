"""Block-aligned prefill and decode on a Hugging Face causal LM.

Why block-aligned: a cached run and an uncached run must do the same arithmetic on the same shapes,
or bfloat16 (and even float32) logits drift and greedy answers change. So the engine computes every
block of every part (engine/blocks.py) the same way, whether the earlier blocks came from the cache
or were computed a moment ago; the only difference a cache hit makes is that some blocks are skipped.
A forward may span several blocks (`prefill_span`): its matmuls still run block by block.

KV layout of one part (a node payload):  (L, 2, H_kv, T_part, D)  L layers, 2 = keys/values.

Llama-family models run on segcache's own lean forward over one preallocated buffer
(engine/llama.py); any other model runs on the library's forward with its DynamicCache.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, replace

import torch
from transformers.cache_utils import DynamicCache

from segcache.engine import native, span_merges
from segcache.engine.fused_decode import FusedDecode, Page, pack_block, page_table
from segcache.engine.linear import KERNEL_MAX_ROWS
from segcache.engine.llama import LlamaForward
from segcache.engine.model import LoadedModel
from segcache.engine.span_merges import SpanMerges
from segcache.engine.units import prefill_units
from segcache.engine.weights import ProjectionBuilder

log = logging.getLogger("segcache.runner")

SMALL_FORWARD_TOKENS = 16   # forwards of fewer rows run on one thread (Runner's docstring)
SELF_CHECK_BLOCKS = (64, 5, 64, 3)   # block sizes of the start-up span check: both thread counts, short blocks


@dataclass
class PrefillState:
    cache: torch.Tensor | DynamicCache   # (L, 2, H_kv, capacity, D) buffer, or the library's cache
    num_tokens: int                      # tokens already in `cache`
    last_logits: torch.Tensor | None     # (vocab,) logits after the last prefilled token
    pages: tuple[Page, ...] = ()         # the tree blocks that hold the buffer's first positions: forwards read
                                         # them in place, shared with every sequence that matched them
    packed_pages: int = 0                # how many of `pages` the packs below were made from (Runner._pack_blocks)
    packs: tuple = ()                    # key blocks 0, 1, .. in the decode attention's tile order: the pages'
                                         # whole blocks, then the buffer's, each once it is whole
    pack_addresses: torch.Tensor | None = None


class Runner:
    def __init__(self, loaded: LoadedModel, lean: bool = True, threads: int | None = None):
        """`lean=False` forces the library's forward (the path for models the lean forward does not know).

        `threads`: for forwards of SMALL_FORWARD_TOKENS or more; smaller ones (decode steps, short
        messages) run on one thread, where the cost of waking a second one exceeds its help. The
        count depends only on a forward's length, so cached and uncached runs still match bit for bit.
        Measured with the engine's one OpenMP team (int4, 2 threads against 1, median of 8): 16 rows
        30.8/30.9 ms with no context, 46/58 ms after 2,048 tokens; 48 rows 37/51 and 68/107 ms. A
        cached turn's 45 new tokens after 2,139 cached: 0.13 s on 2 threads, 0.18 s on 1 (the
        threshold was 64 when a second OpenMP team made waking the second thread dear).
        """
        self.threads = threads or os.cpu_count() or 1
        self._owner = threading.get_ident()   # forwards run on this thread only (`_on_owner_thread`)
        native.set_threads(self.threads)
        self.loaded = loaded
        self.model = loaded.model
        self.lean = self._lean_forward(loaded) if lean and LlamaForward.supports(loaded.model) else None
        if self.lean is None and loaded.weights.quantized:
            raise ValueError(f"--weights {loaded.weights.format} needs a Llama-family model (the lean forward); "
                             "serve this model with --weights auto")
        self.span_merges = None          # runs of whole blocks a span's linears may merge (check_span_merges)
        self.num_prefill_tokens = 0      # tokens actually run through the model in prefill (for audits and tests)
        self.num_prefill_forwards = 0    # prefill forwards run; fewer than blocks when forwards spanned several
        self.num_decode_tokens = 0
        self.num_decode_forwards = 0     # decode forwards run; fewer than decode tokens when steps were batched
        # pages packed into the AMX decode attention's tile order, shared by every running sequence that reads
        # the same tree block, dropped with the last one (docs/batching.md "Packed once")
        self._packs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._decode_packs = self.lean is not None and self.lean.fused is not None \
            and FusedDecode.block_attention(self.lean) != 0

    @property
    def packs_buffers(self) -> bool:
        """Whether decode keeps a copy of each whole key block of a sequence's buffer (`_pack_blocks`)."""
        return self._decode_packs

    @staticmethod
    def _lean_forward(loaded: LoadedModel) -> LlamaForward:
        """Built once per loaded model: engines that share a model (tests, a cached and an uncached
        engine) share its projections too."""
        if "lean" not in loaded.prepared:
            projections = ProjectionBuilder(loaded.weights, loaded.dtype)
            loaded.prepared["lean"] = LlamaForward(loaded.model, projections)
            if loaded.weights.quantized:
                lean = loaded.prepared["lean"]
                fused = "in one native call per step" + ("", ", attention on AMX tiles",
                                                         ", attention on AVX512-BF16")[FusedDecode.block_attention(lean)]
                log.warning("segcache: weights %s: %s; decode %s", loaded.weights.format, projections.summary(),
                            fused if lean.fused is not None else f"per tensor op ({lean.fused_reason})")
        return loaded.prepared["lean"]

    def kernel_paths(self) -> dict[str, str]:
        """Which kernels serve each kind of forward, as /health reports them."""
        if self.lean is None:
            return {"projections": "torch", "prefill": "torch (library forward)", "decode": "torch (library forward)"}
        weights, native_prefill = self.loaded.weights, self.lean.native_prefill
        amx = native_prefill and self.lean.amx_prefill
        if weights.quantized and weights.kernels == "vnni":
            blocks = "amx-int8 tiles" if native.slab_tiles() else "avx512-vnni slabs"
            beyond = "amx-bf16 tiles" if amx else "the dense weight"
            projections = f"{blocks} on the weights' blocks up to 16 rows, {beyond} beyond"
        elif weights.quantized:
            projections = "torch weight-only"
        else:
            projections = "amx-bf16 tiles" if amx else "dense"
        if amx:
            prefill = "amx-bf16 (linears, attention) reading matched tree blocks in place"
        elif native_prefill:
            prefill = ("native: attention on avx512-bf16 over the whole forward reading matched tree blocks in "
                       "place, row-wise ops fused; linears block by block")
        else:
            prefill = "torch, block by block"
        if self.lean.fused is None:
            decode = "torch ops per step"
        else:
            tiles = ("", ", attention on amx-bf16 tiles", ", attention on avx512-bf16 over shared key blocks")[
                FusedDecode.block_attention(self.lean)]
            decode = "one native call per step" + tiles
        return {"projections": projections, "prefill": prefill, "decode": decode}

    # ---------------------------------------------------------------- prefill

    @torch.inference_mode()
    def start(self, payloads: list[torch.Tensor], capacity: int) -> PrefillState:
        """A state holding the KV of a matched chain (empty list: no context), room for `capacity` tokens.

        Where every reader of the matched positions reads them from the tree's blocks (the native prefill
        attention and the fused decode step, `reads_pages`), the buffer gets no copies of them: a turn of 16
        agents behind a 2,000-token prefix copied 57 MB each, into memory touched for the first time (~30 ms
        a request here). Elsewhere the buffer holds copies (`fill_buffer`)."""
        self._on_owner_thread()
        num_cached = sum(p.shape[3] for p in payloads)
        if self.lean is not None:
            buffer = self.lean.new_cache(max(capacity, num_cached))
            position, pages = 0, []
            for payload in payloads:
                pages.append(Page(payload, position))
                position += payload.shape[3]
            state = PrefillState(buffer, num_cached, None, tuple(pages))
            if not self.reads_pages(state):
                self.fill_buffer(state)
            return state
        if not payloads:
            return PrefillState(DynamicCache(config=self.model.config), 0, None)
        kv = torch.cat(payloads, dim=3) if len(payloads) > 1 else payloads[0]   # (L, 2, H, T, D)
        layers = [(kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0)) for i in range(kv.shape[0])]
        return PrefillState(DynamicCache(layers, config=self.model.config), num_cached, None)

    def reads_pages(self, state: PrefillState) -> bool:
        """Whether every forward reads the state's matched positions from its pages, not from its buffer: the
        native prefill and the fused decode step do, for pages that tile positions 0..num_tokens in the KV
        dtype (fused_decode.page_table takes them all)."""
        if self.lean is None or not self.lean.native_prefill or self.lean.fused is None:
            return False
        _, counts = page_table((state.pages,), (state.num_tokens,), self.lean.dtype)
        return int(counts[0]) == len(state.pages)

    def fill_buffer(self, state: PrefillState) -> None:
        """Copy the state's pages into its buffer (lean forward), for readers of the buffer alone."""
        for page in state.pages:
            state.cache[:, :, :, page.start:page.start + page.payload.shape[3]] = page.payload

    @torch.inference_mode()
    def prefill_part(self, state: PrefillState, token_ids: tuple[int, ...]) -> torch.Tensor:
        """Run one part, unit by unit, against the state's context; return a copy of its KV, (L, 2, H, T, D)."""
        start = state.num_tokens
        for unit_start, unit_end in prefill_units(len(token_ids)):
            self.prefill_unit(state, token_ids[unit_start:unit_end])
        return self.part_kv(state, start)

    @torch.inference_mode()
    def prefill_unit(self, state: PrefillState, token_ids: tuple[int, ...]) -> None:
        """One forward over a prefill unit (a part, or a block of one: see engine/units.py)."""
        self.prefill_span(state, token_ids, (len(token_ids),))

    @torch.inference_mode()
    def prefill_span(self, state: PrefillState, token_ids: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        """Consecutive whole blocks of sizes `blocks` (sum len(token_ids)) in one forward, each block's KV and
        the last logits bit-identical to forwards of one block each (engine/llama.py `forward`). The
        library's forward cannot split its matmuls by block, so there the blocks run one forward each."""
        self._on_owner_thread()
        if self.lean is None or len(blocks) == 1:
            offset = 0
            for size in blocks:
                if size:
                    state.last_logits = self._forward(state, token_ids[offset:offset + size])
                    state.num_tokens += size
                    self.num_prefill_forwards += 1
                offset += size
        elif token_ids:
            self._use_threads(len(token_ids))
            ids = torch.tensor(token_ids, dtype=torch.long)                               # (T,)
            state.last_logits = self.lean.forward(state.cache, state.num_tokens, ids, blocks, self._use_threads,
                                                  self.span_merges, state.pages)
            state.num_tokens += len(token_ids)
            self.num_prefill_forwards += 1
        self.num_prefill_tokens += len(token_ids)

    @torch.inference_mode()
    def prefill_spans(self, spans: list[tuple[PrefillState, tuple[int, ...], tuple[int, ...]]]) -> None:
        """Several sequences' spans, (state, token_ids, blocks) as prefill_span takes them, in one forward where
        our kernels serve the prefill (engine/llama.py `forward_many`): their linears stream the weights
        once for all. Every block's KV and each sequence's last logits keep the bits of its own forward.
        Elsewhere they run one forward each."""
        self._on_owner_thread()
        spans = [span for span in spans if span[1]]
        if len(spans) < 2 or self.lean is None or not self.lean.native_prefill:
            for state, token_ids, blocks in spans:
                self.prefill_span(state, token_ids, blocks)
            return
        items = [(state.cache, state.num_tokens, torch.tensor(token_ids, dtype=torch.long), blocks, state.pages)
                 for state, token_ids, blocks in spans]
        self._use_threads(sum(len(token_ids) for _, token_ids, _ in spans))
        logits = self.lean.forward_many(items, self.span_merges, self._use_threads)
        for (state, token_ids, _), last in zip(spans, logits):
            state.last_logits = last
            state.num_tokens += len(token_ids)
            self.num_prefill_tokens += len(token_ids)
        self.num_prefill_forwards += 1

    @torch.inference_mode()
    def spans_agree(self, blocks: tuple[int, ...] = SELF_CHECK_BLOCKS) -> bool:
        """The start-up check of spanned prefill: a short prompt prefilled in one span and block by block
        must give equal KV and last logits, bit for bit (blocks of 64 and more run on the runner's threads,
        smaller ones on one, so the check mixes both)."""
        ids = tuple(range(100, 100 + sum(blocks)))
        spanned, alone = self.start([], len(ids)), self.start([], len(ids))
        self.prefill_span(spanned, ids, blocks)
        position = 0
        for size in blocks:
            self.prefill_unit(alone, ids[position:position + size])
            position += size
        self.num_prefill_tokens -= 2 * len(ids)
        return (torch.equal(self.part_kv(spanned, 0), self.part_kv(alone, 0))
                and torch.equal(spanned.last_logits, alone.last_logits))

    def read_from_block(self, state: PrefillState, payload: object, start: int) -> None:
        """Let decode read positions start.. of `state` from a tree block's KV (the copy the tree keeps of what
        this sequence just computed, or the one another sequence put there first: the same bits), as it reads
        the blocks the sequence matched. Pages that do not continue the state's are ignored at decode."""
        if self.lean is not None and isinstance(payload, torch.Tensor):
            state.pages += (Page(payload, start),)

    def linears_merge(self, block_tokens: int) -> bool:
        """Whether a span's linears run over all its blocks in one call with no check (a kernel whose row bits
        never depend on the call: engine/kernels/amx.c)."""
        return self.lean is not None and all(linear.mergeable(block_tokens) for linear in self._projections())

    def _projections(self) -> list:
        """One layer's projections: every layer has the same shapes, which is what the merge checks try."""
        layer = self.lean.layers[0]
        return [layer.qkv, layer.o_proj, layer.gate_up, layer.down_proj]

    @torch.inference_mode()
    def check_span_merges(self, block_tokens: int, span_tokens: int) -> SpanMerges | None:
        """The start-up check of engine/span_merges.py on this runner's projections and threads, then the span
        check again with runs of whole blocks in it; None (no merging) where either finds a differing bit."""
        if self.lean is None or span_tokens < 2 * block_tokens:
            return None
        merges = span_merges.check(self._projections(), block_tokens, span_tokens // block_tokens, self._use_threads,
                                   self.lean.dtype)
        if not merges.allowed:
            return merges
        self.span_merges = merges
        if not self.spans_agree((block_tokens, block_tokens, 7)):
            self.span_merges = None
        return self.span_merges

    @torch.inference_mode()
    def check_small_merges(self, block_tokens: int) -> SpanMerges | None:
        """The start-up check of engine/span_merges.py `check_small` on this runner's projections and threads:
        where it passes, and the span check then still finds every block's own bits, a span's short blocks
        share their quantized projections' calls. Returns the span merges in force (None: none). Run once per
        loaded model, thread count and block size (about a second)."""
        if self.lean is None:
            return self.span_merges
        return self._adopt_merges(
            f"small merges {self.threads} {block_tokens}",
            lambda: span_merges.check_small(self._projections(), KERNEL_MAX_ROWS, self._use_threads),
            lambda merges, small: replace(merges or SpanMerges(block_tokens, frozenset(), 0), small=small,
                                          small_limit=KERNEL_MAX_ROWS),
            (block_tokens, 5, block_tokens, 3, 9, block_tokens, 16))

    @torch.inference_mode()
    def check_dense_merges(self, block_tokens: int, span_tokens: int) -> SpanMerges | None:
        """The start-up check of engine/span_merges.py `check_dense` on this runner's projections and threads, for
        forwards of up to span_tokens rows: where it passes, and the span check then still finds every block's own
        bits, a span's blocks on the dense weight share one call per linear. Returns the span merges in force
        (None: none). Run once per loaded model, thread count, block size and span (about a second)."""
        if self.lean is None or span_tokens <= block_tokens:
            return self.span_merges
        return self._adopt_merges(
            f"dense merges {self.threads} {block_tokens} {span_tokens}",
            lambda: span_merges.check_dense(self._projections(), block_tokens, span_tokens, self._use_threads,
                                            self.lean.dtype),
            lambda merges, dense: replace(merges or SpanMerges(block_tokens, frozenset(), 0), dense=dense,
                                          dense_limit=span_tokens),
            (block_tokens, 5, 40, block_tokens, 3, 100, 17))

    def _adopt_merges(self, key: str, check, extend, blocks: tuple[int, ...]) -> SpanMerges | None:
        """A merge check run once per loaded model under `key`: `check()` finds the projection shapes whose calls
        may merge, kept only if the span check over `blocks` then still finds every block's own bits;
        `extend(merges, shapes)` adds them to the span merges. Returns the span merges in force."""
        if key not in self.loaded.prepared:
            shapes = check()
            if shapes:
                before = self.span_merges
                self.span_merges = extend(before, shapes)
                if not self.spans_agree(blocks):
                    shapes = frozenset()
                self.span_merges = before
            self.loaded.prepared[key] = shapes
        if self.loaded.prepared[key]:
            self.span_merges = extend(self.span_merges, self.loaded.prepared[key])
        return self.span_merges

    def part_kv(self, state: PrefillState, start: int, end: int | None = None) -> torch.Tensor:
        """A copy of the KV of positions start..end (default num_tokens: the part just prefilled), (L, 2, H, T, D)."""
        end = state.num_tokens if end is None else end
        if self.lean is not None:
            return state.cache[:, :, :, start:end].clone()
        if end == start:
            config = self.model.config
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            return torch.empty((config.num_hidden_layers, 2, config.num_key_value_heads, 0, head_dim),
                               dtype=self.loaded.dtype)
        return torch.stack([torch.stack((layer.keys[0, :, start:end], layer.values[0, :, start:end]))
                            for layer in state.cache.layers])

    # ---------------------------------------------------------------- decode

    @torch.inference_mode()
    def decode_step(self, state: PrefillState, token_id: int) -> torch.Tensor:
        """Feed one generated token; return the next logits (vocab,). Decode KV is never stored.

        On the lean forward, a lone step is a batched decode step of one sequence: the same ops, so a
        sequence's bits do not depend on whether its steps were batched (given row-invariant linears)."""
        self._on_owner_thread()
        if self.lean is not None:
            _use_threads(1)
            self._pack_blocks(state)
            state.last_logits = self.lean.decode((state.cache,), (state.num_tokens,),
                                                 torch.tensor((token_id,), dtype=torch.long), (state.pages,),
                                                 self._packs_of((state,)))[0]
        else:
            state.last_logits = self._forward(state, (token_id,))
        state.num_tokens += 1
        self.num_decode_tokens += 1
        self.num_decode_forwards += 1
        return state.last_logits

    @property
    def can_batch(self) -> bool:
        """Whether several sequences can share one decode forward (the lean forward only)."""
        return self.lean is not None

    @torch.inference_mode()
    def decode_batch(self, states: list[PrefillState], token_ids: list[int]) -> list[torch.Tensor]:
        """One token for each sequence in ONE forward; each sequence's next logits (vocab,).

        torch's ops run on one thread, whatever the batch size: their thread count can change a row's bits,
        and the start-up check (engine/invariance.py) verifies row invariance on one thread. The fused
        native step (engine/fused_decode.py) splits its work over threads, which never changes a row's bits.
        """
        self._on_owner_thread()
        _use_threads(1)
        for state in states:
            self._pack_blocks(state)
        logits = self.lean.decode(tuple(s.cache for s in states), tuple(s.num_tokens for s in states),
                                  torch.tensor(token_ids, dtype=torch.long), tuple(s.pages for s in states),
                                  self._packs_of(states))                                  # (B, V)
        for state, row in zip(states, logits):
            state.last_logits = row
            state.num_tokens += 1
        self.num_decode_tokens += len(states)
        self.num_decode_forwards += 1
        return list(logits)

    def _pack_blocks(self, state: PrefillState) -> None:
        """Pack, once, the state's key blocks of 64 into the decode attention's tile order
        (fused_decode.pack_block): those its pages hold (tree blocks), shared with every running sequence whose
        same block comes from the same tree blocks, and each block of its own buffer once the block is whole.
        A decode step used to pack every block it read, in every step: ~25% of a 16-sequence step at ~2,700
        tokens of context, and a block straddling two tree blocks was copied and packed for each sequence
        alone; with the pages' blocks packed once, the buffer's blocks still cost ~30% of a 16-sequence step
        at a few hundred tokens of context each. A tree block's pack lives while a running sequence holds it
        (at most one 1.5 MB copy of each block that running sequences read); a buffer's packs, as much again
        as the buffer's KV, live as long as the sequence."""
        if not self._decode_packs:
            return
        if state.packed_pages != len(state.pages):
            self._pack_pages(state)
        whole = state.num_tokens // 64
        if len(state.packs) == whole:
            return
        if len(state.packs) > whole:            # the state was rewound (tests): its later blocks may change
            state.packs = state.packs[:whole]
        else:
            table, _, covered = self._used_pages(state)
            cache = state.cache
            buffer = torch.tensor([[cache.data_ptr(), 0, covered, state.num_tokens, cache.shape[3]]], dtype=torch.int64)
            rows = torch.cat((table, buffer))
            state.packs += tuple(pack_block(rows, lo, cache.shape[0], cache.shape[2], self.threads)
                                 for lo in range(len(state.packs) * 64, whole * 64, 64))
        state.pack_addresses = torch.tensor([p.data_ptr() for p in state.packs], dtype=torch.int64)

    def _used_pages(self, state: PrefillState) -> tuple[torch.Tensor, tuple, int]:
        """The pages decode reads (fused_decode.page_table): their table rows, the pages, and the positions they
        cover from 0."""
        table, counts = page_table((state.pages,), (state.num_tokens,), self.lean.dtype)
        pages = state.pages[:int(counts[0])]
        return table[:int(counts[0])], pages, pages[-1].start + pages[-1].payload.shape[3] if pages else 0

    def _pack_pages(self, state: PrefillState) -> None:
        """The packs of the blocks the state's pages hold whole, shared through `_packs`."""
        table, pages, covered = self._used_pages(state)
        layers, _, kv_heads = pages[0].payload.shape[:3] if pages else (0, 0, 0)
        packs, index = [], 0
        for lo in range(0, covered - 63, 64):
            while pages[index].start + pages[index].payload.shape[3] <= lo:
                index += 1
            last = index
            while pages[last].start + pages[last].payload.shape[3] < lo + 64:
                last += 1
            key = (lo,) + tuple((p.payload.data_ptr(), p.start, p.payload.shape[3]) for p in pages[index:last + 1])
            packed = self._packs.get(key)
            if packed is None:
                packed = pack_block(table[index:last + 1], lo, layers, kv_heads, self.threads)
                self._packs[key] = packed
            packs.append(packed)
        state.packs = tuple(packs)
        state.pack_addresses = torch.tensor([p.data_ptr() for p in packs], dtype=torch.int64)
        state.packed_pages = len(state.pages)

    def _packs_of(self, states) -> tuple[torch.Tensor, ...] | None:
        if not self._decode_packs:
            return None
        empty = torch.zeros(0, dtype=torch.int64)
        return tuple(empty if s.pack_addresses is None else s.pack_addresses for s in states)

    def _on_owner_thread(self) -> None:
        """Forwards run on the thread that built the runner. Each thread that runs torch's parallel ops gets
        its own OpenMP team, and with two teams on a 2-core machine OpenMP stops spinning between parallel
        regions: every forward got ~1.5x slower (docs/weights.md). The engine builds and runs its runner
        on its worker thread."""
        if threading.get_ident() != self._owner:
            raise RuntimeError("a Runner's forwards must run on the thread that built it (one OpenMP team per "
                               "process: see Runner._on_owner_thread)")

    def _use_threads(self, num_rows: int) -> None:
        """The thread count of a forward (or, inside a span, of a block) of `num_rows` rows."""
        _use_threads(1 if num_rows < SMALL_FORWARD_TOKENS else self.threads)

    def _forward(self, state: PrefillState, token_ids: tuple[int, ...]) -> torch.Tensor:
        self._use_threads(len(token_ids))
        ids = torch.tensor(token_ids, dtype=torch.long)                                   # (T,)
        if self.lean is not None:
            return self.lean.forward(state.cache, state.num_tokens, ids, pages=state.pages)
        positions = torch.arange(state.num_tokens, state.num_tokens + len(token_ids)).unsqueeze(0)
        out = self.model(input_ids=ids.unsqueeze(0), past_key_values=state.cache, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


def _use_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def kv_num_bytes(kv: torch.Tensor) -> int:
    return kv.numel() * kv.element_size()


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    """What one token's KV costs in a node payload (L, 2, H_kv, 1, D), so a pin can be priced before prefill."""
    config = loaded.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.empty((), dtype=loaded.dtype).element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * element
