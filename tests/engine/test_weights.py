"""Weight formats: the GGUF's Q4 blocks load exactly, the integer kernels are row-invariant, long
forwards take the dense path, and the format is part of the cache scope."""

import numpy as np
import pytest
import torch

from segcache.config import ServeConfig
from segcache.engine.gguf_blocks import GgufBlocks, unpermute_rows
from segcache.engine.linear import KERNEL_MAX_ROWS, DenseLinear, Int4Linear, Int8Linear, is_row_invariant
from segcache.engine.model import embedded_gguf_path
from segcache.engine.quant import quantize_int4, quantize_int8
from segcache.engine.weights import plan_weights

Q4_NAMES = ["blk.0.ffn_gate.weight", "blk.7.ffn_down.weight", "blk.29.attn_q.weight", "blk.12.attn_k.weight"]


@pytest.fixture(scope="module")
def blocks(model_dir):
    return GgufBlocks(embedded_gguf_path())


@pytest.fixture(scope="module")
def reference_tensors(model_dir):
    """The gguf package's own reading of the file (slow: ~10 s), as the reference."""
    import gguf

    return {t.name: t for t in gguf.GGUFReader(embedded_gguf_path()).tensors}


@pytest.mark.parametrize("name", Q4_NAMES)
def test_q4_1_codes_dequantize_to_the_gguf_values(blocks, reference_tensors, name):
    import gguf

    reader_tensor = reference_tensors[name]
    assert reader_tensor.tensor_type.name == "Q4_1"
    expected = torch.from_numpy(gguf.quants.dequantize(np.asarray(reader_tensor.data), reader_tensor.tensor_type))
    if name.endswith(("attn_q.weight", "attn_k.weight")):   # the file stores q/k rows in llama.cpp's order
        expected = expected[unpermute_rows(expected.shape[0], 9 if "attn_q" in name else 3)]
    codes = blocks.int4(name)
    # d*(q-8) + (m+8d) vs d*q + m: equal up to float32 rounding of the scale and offset
    torch.testing.assert_close(codes.dequantize(), expected, rtol=0, atol=1e-6 * expected.abs().max().item())


def test_q4_1_codes_match_the_dense_model_and_the_kernel_runs_them(blocks, load):
    dense = load("default", "float32", "float32").model.model.layers[3].mlp.down_proj.weight
    codes = blocks.int4("blk.3.ffn_down.weight")
    assert torch.equal(codes.dequantize(), dense)   # the converted model IS these blocks, dequantized
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)):
        linear = Int4Linear(codes, DenseLinear(dense.to(dtype)))
        eye = torch.eye(dense.shape[1], dtype=dtype)[:KERNEL_MAX_ROWS]          # rows pick weight columns
        # the kernel multiplies by scales in the activations' dtype: exact to that dtype's rounding
        scaled = type(codes)(codes.codes, codes.scale.to(dtype).float(), codes.offset.to(dtype).float())
        expected = scaled.dequantize()[:, :KERNEL_MAX_ROWS].T
        torch.testing.assert_close(linear(eye).float(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_integer_kernels_give_each_row_its_own_bits_at_batch_1_and_8(blocks, dtype, kind):
    weight = blocks.int4("blk.0.ffn_gate.weight").dequantize()
    dense = DenseLinear(weight.to(dtype))
    linear = Int8Linear(quantize_int8(weight, dtype), dense) if kind == "int8" else \
        Int4Linear(blocks.int4("blk.0.ffn_gate.weight"), dense)
    assert is_row_invariant(linear, batch_sizes=(1, 8))
    assert is_row_invariant(linear)   # and every batch size the integer path serves


def test_forwards_longer_than_the_kernel_rows_use_the_dense_weight():
    weight = torch.randn(96, 64, generator=torch.Generator().manual_seed(1))
    dense = DenseLinear(weight)
    linear = Int8Linear(quantize_int8(weight, torch.float32), dense)
    rows = torch.randn(KERNEL_MAX_ROWS + 1, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(linear(rows), dense(rows))
    assert not torch.equal(linear(rows[:KERNEL_MAX_ROWS]), dense(rows[:KERNEL_MAX_ROWS]))


def test_groupwise_int4_quantization_stays_within_half_a_step():
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    codes = quantize_int4(weight)
    step = codes.scale.repeat_interleave(32, dim=1)
    assert ((codes.dequantize() - weight).abs() <= step / 2 + 1e-6).all()


def test_auto_runs_the_gguf_blocks_and_dense_formats_must_agree_with_the_dtype(model_dir, tiny_model_dir):
    assert plan_weights("auto", torch.bfloat16, embedded_gguf_path()).format == "int4"
    assert plan_weights("auto", torch.bfloat16, None).format == "bf16"
    assert plan_weights("auto", torch.float32, embedded_gguf_path()).format == "float32"
    assert plan_weights("int8", torch.float32, embedded_gguf_path()).gguf_path is None
    with pytest.raises(ValueError, match="--dtype bfloat16"):
        plan_weights("bf16", torch.float32, None)
    with pytest.raises(ValueError, match="--weights bf16 runs in bfloat16"):
        ServeConfig(weights="bf16", dtype="float32")
    with pytest.raises(ValueError, match="--weights must be one of"):
        ServeConfig(weights="q4")


def test_the_weight_format_is_part_of_the_cache_scope(load, tiny_model_dir):
    from segcache.engine.engine import Engine

    engines = [Engine(ServeConfig(model="tiny", dtype="float32", weights=w), loaded=load("tiny", "float32", w))
               for w in ("float32", "int8", "int4")]
    try:
        assert len({engine.scope("t") for engine in engines}) == 3
        assert len({engine.loaded.weights_fingerprint for engine in engines}) == 3
    finally:
        for engine in engines:
            engine.close()


def test_every_projection_of_an_int4_forward_is_row_invariant(load, tiny_model_dir):
    from segcache.engine.runner import Runner

    loaded = load("tiny", "bfloat16", "int4")
    forward = Runner(loaded).lean
    checked = {name: is_row_invariant(linear, batch_sizes=(1, 8)) for name, linear in forward.projections()}
    assert len(checked) == 4 * forward.num_layers + 1 and all(checked.values())
    expected = "BlockLinear" if loaded.weights.kernels == "vnni" else "Int4Linear"   # test_native_kernels.py
    assert {type(linear).__name__ for _, linear in forward.projections()} == {expected}
