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

import torch
import torch.nn.functional as F

from segcache.engine.linear import DenseLinear

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
# The attention path depends only on a part's length, so a cached and an uncached run, which forward
# the same parts, always take the same path: the choice cannot break bit-identity.
FLASH_MIN_TOKENS = 64


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

    def __init__(self, model: torch.nn.Module):
        config = model.config
        self.dtype = model.dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.lm_head = DenseLinear(model.lm_head.weight)
        self.final_norm = inner.norm.weight
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.cos, self.sin = _rope_table(config, self.head_dim, self.dtype)   # (P, D) each

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def projections(self) -> list[tuple[str, object]]:
        """(name, linear) of every distinct projection shape a decode step runs (the batch-invariance check)."""
        first = self.layers[0]
        return [("qkv", first.qkv), ("o_proj", first.o_proj), ("gate_up", first.gate_up),
                ("down_proj", first.down_proj), ("lm_head", self.lm_head)]

    def new_cache(self, capacity: int) -> torch.Tensor:
        return torch.empty((self.num_layers, 2, self.num_kv_heads, capacity, self.head_dim), dtype=self.dtype)

    @torch.inference_mode()
    def forward(self, cache: torch.Tensor, start: int, ids: torch.Tensor) -> torch.Tensor:
        """Run tokens `ids` (T,) at positions start..start+T-1; fill the cache; return the last logits (V,)."""
        num_new = ids.shape[0]
        end = start + num_new
        x = F.embedding(ids, self.embed)                                     # (T, C)
        cos, sin = self.cos[start:end], self.sin[start:end]                   # (T, D)
        mask = None
        if num_new > 1:
            mask = torch.arange(end).unsqueeze(0) <= torch.arange(start, end).unsqueeze(1)   # (T, end)
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            q, k, v = self._qkv(layer, h, cos, sin)                          # (H, T, D), (Hkv, T, D) x2
            cache[index, 0, :, start:end] = k
            cache[index, 1, :, start:end] = v
            attn = self._attend(q, cache[index, 0, :, :end], cache[index, 1, :, :end], mask)   # (H, T, D)
            x = x + layer.o_proj(attn.transpose(0, 1).reshape(num_new, -1))
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down_proj(F.silu(gate) * up)
        x = _rms_norm(x[-1:], self.final_norm, self.eps)
        return self.lm_head(x)[0]

    @torch.inference_mode()
    def decode(self, caches: tuple[torch.Tensor, ...], positions: tuple[int, ...], ids: torch.Tensor) -> torch.Tensor:
        """One token for each of B sequences in one forward; return each one's next logits, (B, V).

        The linear layers run on the stacked rows; RoPE, the KV write and attention are per sequence,
        each against its own buffer up to its own position (the same ops, on the same shapes, as
        `forward` with one token, so a row's bits depend on the batch only through the linears):

            x (B, C) -> qkv (B, (H + 2 H_kv) D) -> per sequence b: cache_b[pos_b] = k_b, v_b
                                                                    attn_b = q_b . cache_b[:pos_b + 1]
        """
        num_seqs = ids.shape[0]
        x = F.embedding(ids, self.embed)                                      # (B, C)
        index = torch.tensor(positions, dtype=torch.long)
        cos, sin = self.cos[index].unsqueeze(1), self.sin[index].unsqueeze(1)  # (B, 1, D)
        for layer_index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            q, k, v = self._qkv_rows(layer, h, cos, sin)                      # (B, H, D), (B, Hkv, D) x2
            rows = []
            for seq, (cache, position) in enumerate(zip(caches, positions)):
                cache[layer_index, 0, :, position] = k[seq]
                cache[layer_index, 1, :, position] = v[seq]
                rows.append(self._attend(q[seq].unsqueeze(1), cache[layer_index, 0, :, :position + 1],
                                         cache[layer_index, 1, :, :position + 1], None))   # (H, 1, D)
            x = x + layer.o_proj(torch.stack(rows).reshape(num_seqs, -1))
            h = _rms_norm(x, layer.post_norm, self.eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down_proj(F.silu(gate) * up)
        return self.lm_head(_rms_norm(x, self.final_norm, self.eps))         # (B, V)

    def _qkv_rows(self, layer: "_Layer", h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, H, D), k and v (B, H_kv, D) for one token per sequence; cos, sin (B, 1, D)."""
        num_seqs = h.shape[0]
        q, k, v = layer.qkv(h).split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                                      self.num_kv_heads * self.head_dim], dim=-1)
        q = q.view(num_seqs, self.num_heads, self.head_dim)
        k = k.view(num_seqs, self.num_kv_heads, self.head_dim)
        v = v.view(num_seqs, self.num_kv_heads, self.head_dim)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Grouped-query attention. Parts of FLASH_MIN_TOKENS or more use the library's fused kernel;
        shorter ones (decode, small messages) avoid its slow CPU path for a few queries this way:

        Query heads g*G..g*G+G-1 share KV head g, so the G heads' rows are stacked against one KV head:
            q (H, T, D) -> (H_kv, G*T, D);  scores (H_kv, G*T, S);  out (H_kv, G*T, D) -> (H, T, D)
        """
        num_heads, num_new, head_dim = q.shape
        if num_new >= FLASH_MIN_TOKENS:   # long parts: the library's fused CPU kernel wins
            bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                                  attn_mask=bias[None, None], enable_gqa=True)[0]
        groups = num_heads // self.num_kv_heads
        grouped = q.reshape(self.num_kv_heads, groups * num_new, head_dim)
        scores = torch.matmul(grouped, k.transpose(1, 2)).float() * self.scale          # (H_kv, G*T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask.repeat(groups, 1), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        return torch.matmul(probs, v).reshape(num_heads, num_new, head_dim)

    def _qkv(self, layer: "_Layer", h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        num_new = h.shape[0]
        qkv = layer.qkv(h)
        q, k, v = qkv.split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                             self.num_kv_heads * self.head_dim], dim=-1)
        q = q.view(num_new, self.num_heads, self.head_dim).transpose(0, 1)
        k = k.view(num_new, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = v.view(num_new, self.num_kv_heads, self.head_dim).transpose(0, 1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v


class _Layer:
    """One decoder layer's weights, with q/k/v and gate/up fused so each is one matmul."""

    def __init__(self, layer: torch.nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        self.qkv = DenseLinear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                               torch.cat(biases) if all(b is not None for b in biases) else None)
        self.o_proj = DenseLinear(attn.o_proj.weight)
        self.gate_up = DenseLinear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        self.down_proj = DenseLinear(mlp.down_proj.weight)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In float32, as the reference implementation does, then back to the model dtype.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _rope_table(config, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    positions = torch.arange(config.max_position_embeddings, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
