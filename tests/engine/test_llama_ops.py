"""The lean forward's own small ops against the library's (RMSNorm, RoPE), and its KV buffer's bounds."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from segcache.engine.llama import LlamaForward, _norm_weight, _rms_norm
from segcache.engine.runner import Runner


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_rms_norm_equals_the_library_norm(rows):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn((rows, 576), generator=generator) * 3
    library = LlamaRMSNorm(576, eps=1e-5)
    library.weight.data = torch.rand(576, generator=generator) + 0.5
    with torch.inference_mode():
        assert torch.allclose(_rms_norm(x, _norm_weight(library.weight), 1e-5), library(x), rtol=1e-5, atol=1e-6)
        # bfloat16: rounded once instead of twice, so within one step of the library's value
        library.to(torch.bfloat16)
        ours = _rms_norm(x.bfloat16(), _norm_weight(library.weight), 1e-5).float()
        theirs = library(x.bfloat16()).float()
    assert torch.allclose(ours, theirs, rtol=2 ** -7, atol=0)


def test_rotary_in_place_equals_the_library_rotary(load):
    loaded = load("tiny", "float32")
    forward, config = LlamaForward(loaded.model), loaded.model.config
    heads, kv_heads, dim = forward.num_heads, forward.num_kv_heads, forward.head_dim
    start, num_rows = 37, 5
    qkv = torch.randn((num_rows, (heads + 2 * kv_heads) * dim), generator=torch.Generator().manual_seed(0))
    q = qkv[:, :heads * dim].view(num_rows, heads, dim).transpose(0, 1)[None]                    # (1, H, T, D)
    k = qkv[:, heads * dim:(heads + kv_heads) * dim].view(num_rows, kv_heads, dim).transpose(0, 1)[None]
    v_before = qkv[:, (heads + kv_heads) * dim:].clone()
    cos, sin = LlamaRotaryEmbedding(config)(qkv, torch.arange(start, start + num_rows)[None])     # (1, T, D)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    with torch.inference_mode():
        forward._rotate_qk_(qkv, forward.cos[start:start + num_rows, None], forward.sin[start:start + num_rows, None])
    assert torch.allclose(qkv[:, :heads * dim].view(num_rows, heads, dim).transpose(0, 1), want_q[0], atol=1e-5)
    assert torch.allclose(qkv[:, heads * dim:(heads + kv_heads) * dim].view(num_rows, kv_heads, dim).transpose(0, 1),
                          want_k[0], atol=1e-5)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim:], v_before), "v is not rotated"


def test_a_decode_step_past_the_buffer_fails_instead_of_dropping_its_kv(load):
    runner = Runner(load("tiny", "bfloat16"))
    state = runner.start([], 4)
    runner.prefill_part(state, (1, 2, 3))
    runner.decode_step(state, 4)                  # position 3: the last slot
    with pytest.raises(IndexError):
        runner.decode_step(state, 5)              # position 4: no room
