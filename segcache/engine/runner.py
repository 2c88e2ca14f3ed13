"""Part-aligned prefill and decode on a Hugging Face causal LM.

Why one forward per part: a cached run and an uncached run must do the same arithmetic on the
same shapes, or bfloat16 (and even float32) logits drift and greedy answers change. So the engine
always prefills part by part, whether the earlier parts came from the cache or were computed a
moment ago; the only difference a cache hit makes is that some forwards are skipped.

KV layout of one part (a node payload):  (L, 2, H_kv, T_part, D)  L layers, 2 = keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from segcache.engine.model import LoadedModel


@dataclass
class PrefillState:
    cache: DynamicCache
    num_tokens: int                      # tokens already in `cache`
    last_logits: torch.Tensor | None     # (vocab,) logits after the last prefilled token


class Runner:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.num_prefill_tokens = 0      # tokens actually run through the model in prefill (for audits and tests)
        self.num_decode_tokens = 0

    # ---------------------------------------------------------------- prefill

    @torch.inference_mode()
    def start(self, payloads: list[torch.Tensor]) -> PrefillState:
        """A cache holding the concatenated KV of a matched chain (empty list: no context)."""
        if not payloads:
            return PrefillState(DynamicCache(config=self.model.config), 0, None)
        kv = torch.cat(payloads, dim=3) if len(payloads) > 1 else payloads[0]   # (L, 2, H, T, D)
        layers = [(kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0)) for i in range(kv.shape[0])]
        return PrefillState(DynamicCache(layers, config=self.model.config), kv.shape[3], None)

    @torch.inference_mode()
    def prefill_part(self, state: PrefillState, token_ids: tuple[int, ...]) -> torch.Tensor:
        """Run one part against the state's context; return that part's KV, (L, 2, H, T, D)."""
        num_new = len(token_ids)
        if num_new == 0:   # a part that lost all its characters to a neighbour's token
            config = self.model.config
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            return torch.empty((config.num_hidden_layers, 2, config.num_key_value_heads, 0, head_dim),
                               dtype=self.loaded.dtype)
        ids = torch.tensor([token_ids], dtype=torch.long)                        # (1, T)
        positions = torch.arange(state.num_tokens, state.num_tokens + num_new).unsqueeze(0)
        out = self.model(input_ids=ids, past_key_values=state.cache, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        state.last_logits = out.logits[0, -1]
        start = state.num_tokens
        state.num_tokens += num_new
        self.num_prefill_tokens += num_new
        return torch.stack([torch.stack((layer.keys[0, :, start:], layer.values[0, :, start:]))
                            for layer in state.cache.layers])

    # ---------------------------------------------------------------- decode

    @torch.inference_mode()
    def decode_step(self, state: PrefillState, token_id: int) -> torch.Tensor:
        """Feed one generated token; return the next logits (vocab,). Decode KV is never stored."""
        ids = torch.tensor([[token_id]], dtype=torch.long)
        positions = torch.tensor([[state.num_tokens]])
        out = self.model(input_ids=ids, past_key_values=state.cache, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        state.num_tokens += 1
        self.num_decode_tokens += 1
        state.last_logits = out.logits[0, -1]
        return state.last_logits


def kv_num_bytes(kv: torch.Tensor) -> int:
    return kv.numel() * kv.element_size()
