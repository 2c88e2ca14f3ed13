"""A lean forward pass for Llama-family models, over one preallocated KV buffer.

Why not the library's forward: on a 135M-parameter, 30-layer model the per-layer Python work
(mask building, cache objects, hooks) costs several times the arithmetic of a decode step. This
module runs the same weights with a handful of tensor ops per layer. Loading stays with
transformers; a model this module does not support runs on the library's forward instead.

KV buffer of one request:  (L, 2, H_kv, capacity, D)   filled from position 0 upwards.

        positions:  0 ............ start ........ start+T ........ capacity
        buffer:     [ context KV  ][ this chunk  ][   free          ]
        a query at start+i attends keys 0 .. start+i
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from segcache.engine import native
from segcache.engine.fused_decode import FusedDecode, page_table
from segcache.engine.linear import DenseLinear
from segcache.engine.span_merges import shape_key
from segcache.engine.weights import ProjectionBuilder

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


class LlamaForward:
    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Llama-style decoders with default RoPE, SiLU MLP and full attention."""
        config = model.config
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        window = getattr(config, "sliding_window", None)
        uses_window = getattr(config, "use_sliding_window", window is not None)
        return (config.model_type in SUPPORTED_TYPES and config.hidden_act == "silu"
                and rope.get("rope_type", rope.get("type", "default")) == "default"
                and not (uses_window and window and window < config.max_position_embeddings))

    def __init__(self, model: torch.nn.Module, projections: ProjectionBuilder | None = None):
        """`projections` builds each projection in the served weight format (default: dense)."""
        config = model.config
        self.dtype = model.dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens.weight
        build = projections.build if projections is not None else _dense
        tied = model.lm_head.weight.data_ptr() == self.embed.data_ptr()
        self.lm_head = build(("token_embd.weight" if tied else "output.weight",), [model.lm_head.weight])
        self.final_norm = _norm_weight(inner.norm.weight)
        self.layers = [_Layer(layer, index, build) for index, layer in enumerate(inner.layers)]
        self.cos, self.sin = _rope_table(config, self.head_dim, self.dtype)   # (P, D) each
        self.fused = self._fused(inner)
        # prefill on our kernels (`_forward_native`) where they take the model: bfloat16, head size 64, and a CPU
        # with AMX (linears and attention on tiles) or with AVX512-BF16 (attention on vectors, the linears
        # those of the weight format, block by block where their bits depend on the call)
        self.amx_prefill = native.amx_unavailable_reason() is None
        self.native_prefill = (self.dtype == torch.bfloat16 and self.head_dim == native.AMX_HEAD_DIM
                               and self.num_heads % self.num_kv_heads == 0 and config.hidden_size % 16 == 0
                               and config.hidden_size <= 8192 and config.intermediate_size % 16 == 0
                               and (self.amx_prefill or native.bf16_attention_unavailable_reason() is None))
        self.prefill_attention = native.amx_attention if self.amx_prefill else native.bf16_attention

    def _fused(self, inner: torch.nn.Module):
        """The one-call native decode step where the weights allow it (engine/fused_decode.py), else None;
        `fused_reason` says which and why."""
        self.fused_reason = FusedDecode.unsupported(self)
        if self.fused_reason is not None:
            return None
        norms = [(layer.input_layernorm.weight, layer.post_attention_layernorm.weight) for layer in inner.layers]
        return FusedDecode(self, norms, inner.norm.weight)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def projections(self):
        """(name, linear) for every projection: what a start-up check of batch invariance walks
        (engine/linear.py `is_row_invariant`)."""
        for index, layer in enumerate(self.layers):
            for name in ("qkv", "o_proj", "gate_up", "down_proj"):
                yield f"layers.{index}.{name}", getattr(layer, name)
        yield "lm_head", self.lm_head

    def new_cache(self, capacity: int) -> torch.Tensor:
        return torch.empty((self.num_layers, 2, self.num_kv_heads, capacity, self.head_dim), dtype=self.dtype)

    @torch.inference_mode()
    def forward(self, cache: torch.Tensor, start: int, ids: torch.Tensor, blocks: tuple[int, ...] | None = None,
                use_threads: Callable[[int], None] | None = None, merges=None, pages: tuple = ()) -> torch.Tensor:
        """Run tokens `ids` (T,) at positions start..start+T-1; fill the cache; return the last logits (V,).

        The forward may span several consecutive blocks of sizes `blocks` (sum T; default one block), and
        each block's rows get the bits they get when the block is a forward of its own. A linear's or the
        attention's row bits depend on the matmul's row and key counts (and threads), so both run per block,
        on the threads `use_threads(block rows)` sets; norms, RoPE, SiLU and adds are row-wise and run over
        the whole span. So a cached run, which starts at any block boundary and groups its blocks into
        forwards from there, computes every block exactly as an uncached run does (engine/units.py).
        `merges` (engine/span_merges.py): runs of whole blocks whose linears one call computes with the bits
        of the calls per block, as the start-up check found. In bfloat16 on a CPU with AMX or AVX512-BF16
        (`native_prefill`), the attention runs on a kernel whose rows never depend on the call (engine/kernels/
        amx_attention.c): one call per span, reading the positions that tree blocks in `pages` (fused_decode.
        Page, from position 0) hold from them, as the decode step does; on AMX the linears too (amx.c); the
        row-wise ops are fused (rowwise.c). Elsewhere the cache must hold every position before `start`.
        """
        if self.native_prefill:
            # our kernels choose their own threads by a call's shape (engine/native.py): no switching per block,
            # except for library linears (no AMX), whose bits depend on the threads as in a forward of one block
            return self._forward_native(cache, start, ids, _Span(start, blocks or (ids.shape[0],),
                                                                 None if self.amx_prefill else use_threads, merges),
                                        pages)
        span = _Span(start, blocks or (ids.shape[0],), use_threads, merges)
        x = F.embedding(ids, self.embed)                                     # (T, C)
        cos, sin = self.cos[start:span.end, None], self.sin[start:span.end, None]   # (T, 1, D)
        masks = [self._mask(block_start, size) for block_start, size in span.blocks()]   # once per forward
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            q, k, v = self._qkv(span.linear(layer.qkv, h), cos, sin)        # (H, T, D), (Hkv, T, D) x2
            cache[index, 0, :, start:span.end] = k
            cache[index, 1, :, start:span.end] = v
            attn = span.attend(self._attend, q, cache[index, 0], cache[index, 1], masks)   # (H, T, D)
            x = x + span.linear(layer.o_proj, attn.transpose(0, 1).reshape(span.num_rows, -1))
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = span.linear(layer.gate_up, h).chunk(2, dim=-1)
            x = x + span.linear(layer.down_proj, F.silu(gate).mul_(up))
        x = _rms_norm(x[-1:], self.final_norm, self.eps)
        return self.lm_head(x)[0]

    def _forward_native(self, cache: torch.Tensor, start: int, ids: torch.Tensor, span: "_Span",
                        pages: tuple = ()) -> torch.Tensor:
        """`forward` on our kernels (bfloat16 where the CPU has AMX or AVX512-BF16), every row's bits independent
        of the call, so each runs once over the whole span: the attention on AMX tiles or AVX512-BF16 vectors
        (engine/kernels/amx_attention.c), the linears on AMX tiles (amx.c) or else as the span plans them
        (block by block where their bits depend on the call); the residual add with the next norm, RoPE with
        the KV write, and silu(gate) * up, each one float32 pass per row rounded once (kernels/rowwise.c)."""
        table = self._tree_pages(pages, start)                               # tree blocks read in place
        x = F.embedding(ids, self.embed)                                     # (T, C), the residual stream
        delta = None                                                         # what the last layer adds to x
        for index, layer in enumerate(self.layers):
            keys, values = cache[index, 0], cache[index, 1]                  # (Hkv, capacity, D) each
            h = native.add_rms_norm(x, delta, layer.input_norm, self.eps)
            qkv = span.linear(layer.qkv, h)                                  # (T, (H + 2 Hkv) D)
            native.rope_kv(qkv, self.cos, self.sin, start, self.num_heads, self.num_kv_heads, self.head_dim,
                           keys, values)
            attn = self.prefill_attention(qkv, keys, values, start, self.num_heads, self.num_kv_heads,
                                          self.head_dim, table, index)       # (T, H D)
            h = native.add_rms_norm(x, span.linear(layer.o_proj, attn), layer.post_norm, self.eps)
            delta = span.linear(layer.down_proj, native.silu_mul(span.linear(layer.gate_up, h)))
        last = x[-1:].clone()
        return self.lm_head(native.add_rms_norm(last, None if delta is None else delta[-1:], self.final_norm,
                                                self.eps))[0]

    def _tree_pages(self, pages: tuple, start: int) -> torch.Tensor | None:
        """The page table rows (fused_decode.page_table) of the tree blocks a prefill at `start` reads in
        place, or None when it reads none."""
        table, counts = page_table((pages,), (start,), self.dtype)
        return table[:int(counts[0])] if counts[0] else None

    @torch.inference_mode()
    def forward_many(self, items: list[tuple], merges=None,
                     use_threads: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Several sequences' prefill forwards as one: items (cache, start, ids, blocks, pages) as `forward`
        takes them, on our kernels only (`native_prefill`). The linears run over every sequence's rows in one
        call where the blocks' sizes allow (`_Span`), so the weights stream once for all of them; RoPE, the KV
        write and the attention run per sequence against its own buffer and pages. A row's bits never depend
        on the call, so each sequence gets those of its own forward. Returns each one's last logits (V,), each
        from an output head call of its own row, as its own forward makes."""
        spans = [_Span(start, blocks or (ids.shape[0],), None, merges) for _, start, ids, blocks, _ in items]
        joint = _Span(0, tuple(size for span in spans for size in span.sizes),
                      None if self.amx_prefill else use_threads, merges)
        tables = [self._tree_pages(pages, start) for _, start, _, _, pages in items]
        offsets = [0]
        for span in spans:
            offsets.append(offsets[-1] + span.num_rows)
        x = F.embedding(torch.cat([ids for _, _, ids, _, _ in items]), self.embed)
        delta = None
        for index, layer in enumerate(self.layers):
            h = native.add_rms_norm(x, delta, layer.input_norm, self.eps)
            qkv = joint.linear(layer.qkv, h)
            attn = torch.empty((joint.num_rows, self.num_heads * self.head_dim), dtype=torch.bfloat16)
            for (cache, start, _, _, _), table, lo, hi in zip(items, tables, offsets, offsets[1:]):
                keys, values = cache[index, 0], cache[index, 1]
                native.rope_kv(qkv[lo:hi], self.cos, self.sin, start, self.num_heads, self.num_kv_heads,
                               self.head_dim, keys, values)
                self.prefill_attention(qkv[lo:hi], keys, values, start, self.num_heads, self.num_kv_heads,
                                       self.head_dim, table, index, out=attn[lo:hi])
            h = native.add_rms_norm(x, joint.linear(layer.o_proj, attn), layer.post_norm, self.eps)
            delta = joint.linear(layer.down_proj, native.silu_mul(joint.linear(layer.gate_up, h)))
        lasts = torch.tensor([end - 1 for end in offsets[1:]])
        normed = native.add_rms_norm(x[lasts].contiguous(), None if delta is None else delta[lasts],
                                     self.final_norm, self.eps)
        logits = []
        for i, span in enumerate(spans):
            if joint.use_threads is not None:       # as the sequence's own forward ends: on its span's threads
                joint.use_threads(span.num_rows)
            logits.append(self.lm_head(normed[i:i + 1])[0])
        return logits

    @torch.inference_mode()
    def decode(self, caches: tuple[torch.Tensor, ...], positions: tuple[int, ...], ids: torch.Tensor,
               pages: tuple[tuple, ...] | None = None, packs: tuple | None = None) -> torch.Tensor:
        """One token for each of B sequences in one forward; return each one's next logits, (B, V).
        A lone decode step is this with B = 1, so a row's bits depend on the batch only through the linears
        (whose row invariance the engine checks at start-up: engine/invariance.py).

        The linear layers run on the stacked rows; the KV write and attention are per sequence, each
        against its own buffer up to its own position:

            x (B, C) -> qkv (B, (H + 2 H_kv) D), q|k rotated in place -> per sequence b:
                cache_b[layer, :, :, pos_b] = k_b|v_b          (one copy)
                attn_b = sdpa(q_b, cache_b[layer, 0, :, :pos_b + 1], cache_b[layer, 1, :, :pos_b + 1])

        Every per-sequence view of the buffers is cut once per step (`unbind` over layers), not once per layer.
        On block-quantized weights the whole step is one native call instead (`self.fused`), which reads each
        sequence's cached prefix from the tree blocks in `pages` (fused_decode.Page) where given, and its
        key blocks packed once in `packs` (Runner._pack_blocks); this path reads the buffers' copies of them.
        """
        if self.fused is not None:
            return self.fused(caches, positions, ids, pages=pages, packs=packs)
        num_seqs = ids.shape[0]
        x = F.embedding(ids, self.embed)                                      # (B, C)
        index = torch.tensor(positions, dtype=torch.long)
        cos, sin = self.cos[index].unsqueeze(1), self.sin[index].unsqueeze(1)  # (B, 1, D)
        views = [_DecodeViews(cache, position) for cache, position in zip(caches, positions)]
        for layer_index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            qkv = layer.qkv(h)                                                # (B, (H + 2 H_kv) D)
            self._rotate_qk_(qkv, cos, sin)
            queries = qkv[:, :self.num_heads * self.head_dim].view(num_seqs, 1, self.num_heads, 1, self.head_dim)
            kvs = qkv[:, self.num_heads * self.head_dim:].view(num_seqs, 2, self.num_kv_heads, self.head_dim)
            rows = [seq.attend(layer_index, q, kv) for seq, q, kv in zip(views, queries.unbind(0), kvs.unbind(0))]
            x = x + layer.o_proj(torch.cat(rows).view(num_seqs, -1))           # rows: B x (1, H, 1, D)
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down_proj(F.silu(gate).mul_(up))
        return self.lm_head(_rms_norm(x, self.final_norm, self.eps))         # (B, V)

    def _rotate_qk_(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """RoPE on the q and k columns of a qkv output (T, (H + 2 H_kv) D), in place, both in one pass;
        cos (T, 1, D) and sin (T, 1, D), the latter with its first half negated (`_rope_table`):

            x = (x1, x2)  ->  x * cos + (x2, x1) * (-sin1, sin2) = (x1 cos - x2 sin, x2 cos + x1 sin)
        """
        num_rows, heads, half = qkv.shape[0], self.num_heads + self.num_kv_heads, self.head_dim // 2
        qk = qkv[:, :heads * self.head_dim].view(num_rows, heads, self.head_dim)          # (T, H + H_kv, D)
        swapped = qk.unflatten(-1, (2, half)).flip(-2).flatten(-2)                          # (x2, x1), a copy
        torch.addcmul(qk * cos, swapped, sin, out=qk)

    def _mask(self, start: int, num_new: int) -> torch.Tensor | None:
        """The additive attention bias of a forward of `num_new` tokens at `start`: (T, S), 0 where a
        query may look, -inf where not; a query at start+i sees keys 0..start+i (S = start + T).
        One token sees every key: no bias."""
        if num_new == 1:
            return None
        end = start + num_new
        blocked = torch.arange(end).unsqueeze(0) > torch.arange(start, end).unsqueeze(1)   # (T, S)
        return torch.zeros(blocked.shape, dtype=self.dtype).masked_fill_(blocked, float("-inf"))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Grouped-query attention through the library's fused CPU kernel, at every length:
        q (H, T, D), k and v (H_kv, S, D) -> (H, T, D).

        Measured here (torch 2.13, bfloat16, one thread), it beats a hand-written grouped matmul +
        softmax at every length, most where it matters: a decode step over 2,100 keys 1.9 ms vs 6.0 ms
        per layer, a 60-token turn after 2,000 tokens 23 ms vs 84 ms. (The bfloat16 batched matmul of
        a few query rows takes a slow path; the fused kernel does not.)
        """
        return F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                              attn_mask=None if bias is None else bias[None, None],
                                              enable_gqa=True)[0]

    def _qkv(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (H, T, D), k and v (H_kv, T, D): views of the fused projection's output (T, (H + 2 H_kv) D),
        q and k rotated in place."""
        num_new = qkv.shape[0]
        # Rotate in (T, heads, D), where each row is contiguous, and only then view as (heads, T, D):
        # the same arithmetic, without strided elementwise loops (2x faster at 2,000 tokens).
        self._rotate_qk_(qkv, cos, sin)
        q, k, v = qkv.split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                             self.num_kv_heads * self.head_dim], dim=-1)
        q = q.view(num_new, self.num_heads, self.head_dim).transpose(0, 1)
        k = k.view(num_new, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = v.view(num_new, self.num_kv_heads, self.head_dim).transpose(0, 1)
        return q, k, v


class _DecodeViews:
    """One sequence's slice of a decode step: views of its KV buffer cut once per step, one per layer.

        slot[layer]    (2, H_kv, D)          where this step's k|v go (position `position`)
        keys[layer]    (1, H_kv, S, D)       keys 0..position (S = position + 1), values likewise
    """

    def __init__(self, cache: torch.Tensor, position: int):
        self.slot = cache[:, :, :, position].unbind(0)
        context = cache[:, :, :, :position + 1].unsqueeze(2)                  # (L, 2, 1, H_kv, S, D)
        self.keys, self.values = context[:, 0].unbind(0), context[:, 1].unbind(0)

    def attend(self, layer_index: int, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Write this step's k|v (2, H_kv, D), attend q (1, H, 1, D) over keys 0..position: (1, H, 1, D)."""
        self.slot[layer_index].copy_(kv)
        return F.scaled_dot_product_attention(q, self.keys[layer_index], self.values[layer_index], enable_gqa=True)


class _Span:
    """The blocks one prefill forward spans, and the per-block runs of its linears and attention.

        rows of the forward:  0 ......... 64 ........ 128 .. 140        blocks (64, 64, 12)
        each linear:          [ linear   ][ linear   ][ lin ]           concatenated
        attention of block b: its rows' queries against keys 0 .. the block's end
    """

    def __init__(self, start: int, sizes: tuple[int, ...], use_threads: Callable[[int], None] | None, merges=None):
        self.start, self.sizes, self.use_threads = start, tuple(s for s in sizes if s) or (0,), use_threads
        self.merges = merges
        self._plans = {}                    # _planned_calls per kind of linear
        self.num_rows = sum(self.sizes)
        self.end = start + self.num_rows

    def blocks(self):
        """(absolute start, size) of each block."""
        position = self.start
        for size in self.sizes:
            yield position, size
            position += size

    def linear(self, linear, x: torch.Tensor) -> torch.Tensor:
        """linear(x) for x (T, in), computed block by block, or in calls that gather blocks where their rows keep
        the bits of the block's own call (`_calls`): (T, out)."""
        if len(self.sizes) == 1:
            return linear(x)
        calls = self._planned_calls(linear)
        y = None if len(calls) == 1 and calls[0][2] is None else \
            torch.empty((self.num_rows, linear.out_features), dtype=x.dtype)
        for offset, rows, rows_of in calls:
            if self.use_threads is not None:
                self.use_threads(rows)
            if y is None:                                   # one call over every row
                y = linear(x)
            elif rows_of is None:                           # a run writes its rows of y in place
                linear(x[offset:offset + rows], y[offset:offset + rows])
            else:                                           # gathered blocks, read and written in place
                linear(x, y, rows_of)
        if self.use_threads is not None:
            self.use_threads(self.num_rows)     # back to the span's threads for its row-wise ops
        return y

    def _planned_calls(self, linear) -> list[tuple[int, int, torch.Tensor | None]]:
        """`_calls` as (offset, rows, None) for a run of consecutive rows, or (0, rows, the rows' indices) for
        gathered ones; made once per kind of linear in the span (every layer has the same)."""
        key = shape_key(linear)
        if key not in self._plans:
            self._plans[key] = [(pieces[0][0], pieces[0][1], None) if len(pieces) == 1 else
                                (0, sum(size for _, size in pieces),
                                 torch.cat([torch.arange(offset, offset + size) for offset, size in pieces]))
                                for pieces in self._calls(linear)]
        return self._plans[key]

    def _calls(self, linear) -> list[list[tuple[int, int]]]:
        """The linear's calls, each a list of (offset, rows) pieces of the span that it computes together:
        - every block on a kernel whose rows never depend on the call (`mergeable`: the AMX kernel; or the dense
          weight where the start-up check found its rows' bits the same in calls of any size, `merges.dense_from`
          rows and more, up to `merges.dense_limit` rows in all), in one;
        - blocks of at most `merges.small_rows(linear)` rows on the quantized kernel whose rows the start-up
          check found independent of the call, gathered into calls of up to that many rows (a block's rows
          may fall into two calls);
        - else each block alone, or a run of equal whole blocks the start-up check merged."""
        calls, anywhere, small, offset, index = [], [], [], 0, 0
        mergeable = getattr(linear, "mergeable", None)
        small_rows = self.merges.small_rows(linear) if self.merges is not None else 0
        dense_from = self.merges.dense_from(linear) if self.merges is not None else 0
        dense_room = self.merges.dense_limit if dense_from else 0
        while index < len(self.sizes):
            size = self.sizes[index]
            if (mergeable is not None and mergeable(size)) or (dense_from and dense_from <= size <= dense_room):
                anywhere.append((offset, size))
                dense_room -= size
                offset, index = offset + size, index + 1
                continue
            if size <= small_rows:
                small.append((offset, size))
                offset, index = offset + size, index + 1
                continue
            same = 1
            while index + same < len(self.sizes) and self.sizes[index + same] == size:
                same += 1
            # the longest allowed run of the equal blocks that follow (a check may pass at 3 and fail at 2)
            count = next((n for n in range(same, 1, -1) if self.merges is not None
                          and self.merges.allows(linear, size, n)), 1)
            calls.append([(offset, size * count)])
            offset, index = offset + size * count, index + count
        if anywhere:
            calls.insert(0, _joined(anywhere))
        return calls + _in_calls_of(small, small_rows)

    def attend(self, attend, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, masks) -> torch.Tensor:
        """Each block's queries q (H, rows, D) against keys and values (H_kv, capacity, D) up to its end,
        with `masks[block]`: (H, T, D)."""
        def block(index: int, offset: int, size: int) -> torch.Tensor:
            end = self.start + offset + size
            return attend(q[:, offset:offset + size], keys[:, :end], values[:, :end], masks[index])
        if len(self.sizes) == 1:
            return block(0, 0, self.num_rows)
        return self._per_block(block, dim=1)

    def _per_block(self, run, dim: int) -> torch.Tensor:
        parts = []
        for index, (position, size) in enumerate(self.blocks()):
            if self.use_threads is not None:
                self.use_threads(size)
            parts.append(run(index, position - self.start, size))
        if self.use_threads is not None:
            self.use_threads(self.num_rows)     # back to the span's threads for its row-wise ops
        return torch.cat(parts, dim=dim)


def _joined(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, rows) pieces with the adjacent ones joined."""
    joined = [pieces[0]]
    for offset, size in pieces[1:]:
        last_offset, last_size = joined[-1]
        if last_offset + last_size == offset:
            joined[-1] = (last_offset, last_size + size)
        else:
            joined.append((offset, size))
    return joined


def _in_calls_of(pieces: list[tuple[int, int]], most: int) -> list[list[tuple[int, int]]]:
    """The rows of `pieces`, in order, cut into calls of up to `most` rows."""
    calls, call, room = [], [], most
    for offset, size in pieces:
        while size:
            take = min(size, room)
            call.append((offset, take))
            offset, size, room = offset + take, size - take, room - take
            if not room:
                calls.append(_joined(call))
                call, room = [], most
    if call:
        calls.append(_joined(call))
    return calls


class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up fused so each is one matmul.

    `build(gguf_names, weights, bias)` makes a projection in the served format; the GGUF names let a
    packed format find the file's own blocks for the same rows (engine/weights.py).
    """

    def __init__(self, layer: torch.nn.Module, index: int, build=None):
        build = build or _dense
        attn, mlp = layer.self_attn, layer.mlp
        blk = f"blk.{index}."
        self.input_norm = _norm_weight(layer.input_layernorm.weight)        # (C,) float32, see _rms_norm
        self.post_norm = _norm_weight(layer.post_attention_layernorm.weight)
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        self.qkv = build((blk + "attn_q.weight", blk + "attn_k.weight", blk + "attn_v.weight"),
                         [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight],
                         torch.cat(biases) if all(b is not None for b in biases) else None)
        self.o_proj = build((blk + "attn_output.weight",), [attn.o_proj.weight])
        self.gate_up = build((blk + "ffn_gate.weight", blk + "ffn_up.weight"),
                             [mlp.gate_proj.weight, mlp.up_proj.weight])
        self.down_proj = build((blk + "ffn_down.weight",), [mlp.down_proj.weight])


def _dense(gguf_names: tuple[str, ...], weights: list[torch.Tensor], bias: torch.Tensor | None = None) -> DenseLinear:
    return DenseLinear(torch.cat(weights) if len(weights) > 1 else weights[0], bias)


def _norm_weight(weight: torch.Tensor) -> torch.Tensor:
    """An RMSNorm weight (C,) as `_rms_norm` takes it: float32, times sqrt(C)."""
    return weight.float() * weight.shape[0] ** 0.5


def _rms_norm(x: torch.Tensor, scaled_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, (T, C) -> (T, C) in x's dtype, computed in float32 and rounded once.

    As x * (weight sqrt(C)) / sqrt(sum(x^2) + C eps), with `scaled_weight` = weight sqrt(C) in float32
    (`_norm_weight`): one float32 copy of x, one reduction, the rest in place. 8 kernels instead of 13
    for each of the 61 norms of a decode step (measured: 26 vs 48 us at one row, 2.8 vs 9.2 ms at 2,000)."""
    x32 = x.to(torch.float32, copy=True)     # a copy even when x is float32: it is changed in place
    inverse = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().add_(x.shape[-1] * eps).rsqrt_()
    return x32.mul_(inverse).mul_(scaled_weight).to(x.dtype)


def _rope_table(config, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    # sin with its first half negated: what multiplies the swapped halves (x2, x1) in `_rotate_qk_`
    signed_sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
    return emb.cos().to(dtype), signed_sin.to(dtype)
