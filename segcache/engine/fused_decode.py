"""A lean forward's decode step as one native call (engine/kernels/decode.c), where its weights allow.

    LlamaForward.decode(caches, positions, ids)
        fused:      x = embed(ids) -> segcache_decode_step(all layers, B sequences) -> logits (B, V)
        otherwise:  the per-layer tensor ops of engine/llama.py, each projection its own kernel call

Eligible: every layer projection on the VNNI block kernels, all Q4 (int4) or all Q8 (int8), the output
layer on Q4 or Q8 blocks, no projection biases, a head size that is a multiple of 16 (<= 128), up to 8
query heads per KV head, KV buffers in bfloat16 or float32. `FusedDecode.unsupported` says why not
otherwise, for the start-up log. With bfloat16 KV and head size 64, the step's attention runs over key blocks
packed once, on AMX tiles or else on AVX512-BF16 vectors, and sequences that read the same tree block share its
products (`block_attention`).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segcache.engine import native
from segcache.engine.linear import BlockLinear


class _Model(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("num_layers", "hidden", "heads", "kv_heads", "head_dim",
                                                    "inter", "vocab", "max_positions")] + [
        ("eps", ctypes.c_float), ("head_q8", ctypes.c_int), ("layers_q8", ctypes.c_int), ("kv_bf16", ctypes.c_int),
        ("block_attention", ctypes.c_int), ("slabs", ctypes.c_int)] + [
        (name, ctypes.c_void_p) for name in ("input_norm", "post_norm", "qkv_codes", "o_codes", "gate_up_codes",
                                             "down_codes", "final_norm", "head_codes", "cos_table", "sin_table")]


class FusedDecode:
    def __init__(self, forward, norms: list[tuple[torch.Tensor, torch.Tensor]], final_norm: torch.Tensor):
        """`norms`: each layer's (input, post-attention) RMSNorm weights, `final_norm` the last one."""
        layers = forward.layers
        self._keep = []                                  # every tensor whose address the struct holds

        def addresses(tensors) -> int:
            tensors = [t.contiguous() for t in tensors]
            table = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)
            self._keep.extend([*tensors, table])
            return table.data_ptr()

        def keep(tensor: torch.Tensor) -> int:
            tensor = tensor.contiguous()
            self._keep.append(tensor)
            return tensor.data_ptr()

        head = forward.lm_head.blocks
        inter = layers[0].down_proj.blocks.num_in
        self.model = _Model(
            num_layers=len(layers), hidden=layers[0].qkv.blocks.num_in, heads=forward.num_heads,
            kv_heads=forward.num_kv_heads, head_dim=forward.head_dim, inter=inter, vocab=head.num_out,
            max_positions=forward.cos.shape[0], eps=forward.eps, head_q8=int(head.kind == "q8"),
            layers_q8=int(layers[0].qkv.blocks.kind == "q8"),
            kv_bf16=int(forward.dtype == torch.bfloat16), block_attention=self.block_attention(forward),
            slabs=1 if native.slab_tiles() else 2,
            input_norm=addresses([n[0].float() for n in norms]), post_norm=addresses([n[1].float() for n in norms]),
            qkv_codes=addresses([l.qkv.blocks.codes for l in layers]),
            o_codes=addresses([l.o_proj.blocks.codes for l in layers]),
            gate_up_codes=addresses([l.gate_up.blocks.codes for l in layers]),
            down_codes=addresses([l.down_proj.blocks.codes for l in layers]),
            final_norm=keep(final_norm.float()), head_codes=keep(head.codes),
            cos_table=keep(forward.cos.float()), sin_table=keep(forward.sin.float()))
        self.dtype, self.embed, self.hidden = forward.dtype, forward.embed, self.model.hidden
        self.threads = ThreadChooser()

    @staticmethod
    def block_attention(forward) -> int:
        """How the step attends, as kernels/decode.c's `block_attention` takes it: over key blocks packed once and
        shared by the sequences that read them, with AMX tile products (1) or, on a CPU with AVX512-BF16 but no
        AMX, vector products (2); else each sequence alone in float32 (0). Bfloat16 KV and head size 64 only."""
        if FusedDecode.amx_attention(forward):
            return 1
        if forward.dtype == torch.bfloat16 and forward.head_dim == native.AMX_HEAD_DIM \
                and native.bf16_attention_unavailable_reason() is None:
            return 2
        return 0

    @staticmethod
    def amx_attention(forward) -> bool:
        """Whether the step's attention runs on AMX tiles (kernels/decode.c `attend_piece_amx`): bfloat16 KV,
        head size 64, a CPU with AMX. It changes the bits of the decode, never whether they depend on the batch."""
        return forward.dtype == torch.bfloat16 and forward.head_dim == native.AMX_HEAD_DIM \
            and native.amx_unavailable_reason() is None

    @staticmethod
    def unsupported(forward) -> str | None:
        """None when the forward's decode can run fused, else why not."""
        if native.unavailable_reason() is not None:
            return native.unavailable_reason()
        projections = [linear for _, linear in forward.projections()]
        if not all(isinstance(p, BlockLinear) for p in projections):
            return "not every projection is on the block kernels"
        if len({p.blocks.kind for p in projections[:-1]}) != 1:
            return "the layer projections mix Q4 and Q8 blocks"
        if any(p.dense.bias is not None for p in projections):
            return "the projections have biases"
        if forward.head_dim % 16 or forward.head_dim > 128 or forward.num_heads // forward.num_kv_heads > 8 \
                or forward.dtype not in (torch.bfloat16, torch.float32):
            return (f"head size {forward.head_dim} (a multiple of 16 up to 128), query heads per KV head "
                    f"{forward.num_heads // forward.num_kv_heads} (up to 8) or dtype {forward.dtype} not supported")
        return None

    @torch.inference_mode()
    def __call__(self, caches: tuple[torch.Tensor, ...], positions: tuple[int, ...], ids: torch.Tensor,
                 threads: int | None = None, pages: tuple[tuple[Page, ...], ...] | None = None,
                 packs: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """One token for each of B sequences: their next logits (B, V) in the model dtype; KV written.
        `pages`: for each sequence, the tree blocks that hold its first positions (`Page`), read in place
        (the same values as a buffer's copies: the same bits). `packs`: for each sequence, int64 addresses
        of its key blocks 0, 1, .. already in the AMX attention's tile order (`pack_block`; 0: none), within
        its pages. `threads`: a fixed count instead of the chooser's (tests)."""
        num_seqs = ids.shape[0]
        x = F.embedding(ids, self.embed).float().contiguous()                  # (B, C), overwritten
        addresses = torch.tensor([c.data_ptr() for c in caches], dtype=torch.int64)
        capacities = torch.tensor([c.shape[3] for c in caches], dtype=torch.int64)
        where = torch.tensor(positions, dtype=torch.int64)
        table, counts = page_table(pages, positions, self.dtype) if pages is not None else (None, None)
        pack_counts = None if packs is None else torch.tensor([p.shape[0] for p in packs], dtype=torch.int64)
        packs = None if packs is None else torch.cat([*packs, torch.zeros(1, dtype=torch.int64)])
        logits = torch.empty((num_seqs, self.model.vocab), dtype=self.dtype)
        threads, started = threads or self.threads.pick(num_seqs), time.perf_counter()
        status = native.library().segcache_decode_step(
            ctypes.byref(self.model), x.data_ptr(), num_seqs, addresses.data_ptr(), capacities.data_ptr(),
            where.data_ptr(), None if table is None else table.data_ptr(),
            None if counts is None else counts.data_ptr(), None if packs is None else packs.data_ptr(),
            None if pack_counts is None else pack_counts.data_ptr(), logits.data_ptr(), threads)
        self.threads.record(threads, time.perf_counter() - started, num_seqs)
        if status != 0:
            raise RuntimeError(f"fused decode refused positions {positions} (capacities {capacities.tolist()})")
        return logits


@dataclass(frozen=True)
class Page:
    """Positions start..start+T-1 of a sequence, held by a tree block's KV payload (L, 2, H_kv, T, D)."""
    payload: torch.Tensor
    start: int


def pack_block(rows: torch.Tensor, start: int, layers: int, kv_heads: int, threads: int) -> torch.Tensor:
    """Key block start..start+63 of a sequence, read from the pages that hold it (their `page_table` rows),
    packed into the AMX decode attention's tile order for every layer and KV head (kernels/decode.c
    `segcache_pack_block`): 1.5 MB for the default model. A step reads it instead of packing the block again,
    with the same bits."""
    rows = rows.contiguous()
    packed = torch.empty(layers * kv_heads * 2 * 2 * 64 * 64, dtype=torch.bfloat16)
    status = native.library().segcache_pack_block(rows.data_ptr(), rows.shape[0], layers, kv_heads, start,
                                                  packed.data_ptr(), threads)
    if status != 0:
        raise RuntimeError(f"packing refused key block {start} from pages {rows.tolist()}")
    return packed


def page_table(pages: tuple[tuple[Page, ...], ...], positions: tuple[int, ...], dtype: torch.dtype):
    """The kernel's page rows (address, origin, from, to, capacity) and per-sequence counts. A sequence's
    pages are used up to the first that is empty, not a contiguous payload of the KV dtype, not where the
    previous one ended, or reaching its current position; its buffer covers the rest."""
    rows, counts = [], []
    for sequence_pages, position in zip(pages, positions):
        used = covered = 0
        for page in sequence_pages:
            tokens = page.payload.shape[3]
            if page.payload.dtype != dtype or not page.payload.is_contiguous() or page.start != covered \
                    or tokens == 0 or page.start + tokens > position:
                break
            covered = page.start + tokens
            rows.append((page.payload.data_ptr(), page.start, page.start, page.start + tokens, tokens))
            used += 1
        counts.append(used)
    table = torch.tensor(rows, dtype=torch.int64).reshape(-1, 5) if rows else torch.zeros((1, 5), dtype=torch.int64)
    return table, torch.tensor(counts, dtype=torch.int64)


class ThreadChooser:
    """The fused step's thread count, chosen by measured time and re-chosen as the machine's load changes
    (a row's bits do not depend on it). The step synchronizes its threads ~12 times per layer: on idle
    cores two threads decode a row ~2.8x faster than one (measured here), but when other work holds the
    cores each synchronization can wait a scheduler slice, and one thread is then many times faster.
    So, per batch size class (1, 2-3, 4-7, 8-15, 16+ rows): try each count, run the faster one, and try
    the other again every EXPLORE steps."""

    EXPLORE = 64
    WEIGHT = 0.3       # of the newest sample in the moving average

    def __init__(self, most: int | None = None):
        self.most = most
        self.cost: dict[tuple[int, int], float] = {}     # (size class, threads) -> moving average of seconds
        self.steps: dict[int, int] = {}

    def pick(self, rows: int) -> int:
        most = self.most or native.threads()
        if most == 1:
            return 1
        size = min(rows, 16).bit_length()
        self.steps[size] = self.steps.get(size, 0) + 1
        untried = [count for count in (most, 1) if (size, count) not in self.cost]
        if untried:
            return untried[0]
        ranked = sorted((most, 1), key=lambda count: self.cost[size, count])
        return ranked[-1] if self.steps[size] % self.EXPLORE == 0 else ranked[0]

    def record(self, threads: int, seconds: float, rows: int) -> None:
        key = (min(rows, 16).bit_length(), threads)
        previous = self.cost.get(key)
        self.cost[key] = seconds if previous is None else (1 - self.WEIGHT) * previous + self.WEIGHT * seconds


@torch.inference_mode()
def first_variant_row(forward, max_batch: int, seed: int = 0) -> str | None:
    """The start-up batch-invariance check of a fused decode step (engine/invariance.py): sequences with
    random KV at different lengths, decoded alone and in batches up to `max_batch`; None if every row's
    logits and KV have the same bits in the batch as alone, else what differed."""
    generator = torch.Generator().manual_seed(seed)
    caches, positions = [], []
    for row in range(max_batch):
        cache = forward.new_cache(16)
        cache.copy_(torch.randn(cache.shape, generator=generator).to(cache.dtype))
        caches.append(cache)
        positions.append(1 + row % 13)
    ids = torch.randint(0, forward.embed.shape[0], (max_batch,), generator=generator)
    snapshot = [cache.clone() for cache in caches]
    alone = [forward.fused((caches[row],), (positions[row],), ids[row:row + 1])[0] for row in range(max_batch)]
    alone_kv = [cache.clone() for cache in caches]
    for batch in sorted({2, max(2, max_batch // 2), max_batch}):
        for row in range(batch):
            caches[row].copy_(snapshot[row])
        logits = forward.fused(tuple(caches[:batch]), tuple(positions[:batch]), ids[:batch])
        for row in range(batch):
            if not (torch.equal(logits[row], alone[row]) and torch.equal(caches[row], alone_kv[row])):
                return f"the fused decode step gives row {row} different bits in a batch of {batch} than alone"
    return None
