"""The AMX bfloat16 matmul (engine/kernels/amx.c): it computes x W^T + b, every row gets the same bits in a
call of any size, at any place and on any thread count, and where it serves a prefill span runs each linear
over all its blocks in one call, with the cache scope saying so."""

import pytest
import torch

from segcache.engine import native, span_merges
from segcache.engine.linear import KERNEL_MAX_ROWS, BlockLinear, DenseLinear
from segcache.engine.llama import _Span
from segcache.engine.model import embedded_gguf_path
from segcache.engine.weights import plan_weights

pytestmark = pytest.mark.skipif(native.amx_unavailable_reason() is not None,
                                reason=f"AMX kernel unavailable: {native.amx_unavailable_reason()}")


def _weights(num_out: int, num_in: int, seed: int, bias: bool = False):
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn((num_out, num_in), generator=generator) * 0.05).bfloat16()
    return weight, (torch.randn((num_out,), generator=generator).bfloat16() if bias else None)


@pytest.mark.parametrize("shape", [(96, 64), (960, 576), (64, 1536)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_kernel_computes_x_times_the_weights_plus_the_bias(shape, with_bias):
    weight, bias = _weights(*shape, seed=1, bias=with_bias)
    x = torch.randn((45, shape[1]), generator=torch.Generator().manual_seed(2)).bfloat16()
    y = native.AmxWeights(weight, bias).matmul(x)
    exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    # float32 accumulation, one rounding to bfloat16 at the end: within a bfloat16 step of the exact value
    assert y.dtype == torch.bfloat16 and y.shape == (45, shape[0])
    assert ((y.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-3).all()


def test_every_row_gets_its_own_bits_in_any_call_at_any_place_on_any_threads():
    weight, bias = _weights(960, 576, seed=3, bias=True)
    amx = native.AmxWeights(weight, bias)
    x = torch.randn((300, 576), generator=torch.Generator().manual_seed(4)).bfloat16()
    saved = native.threads()
    try:
        native.set_threads(1)
        alone = torch.cat([amx.matmul(x[i:i + 1]) for i in range(x.shape[0])])
        for threads in (1, 2, 3):
            native.set_threads(threads)
            assert torch.equal(amx.matmul(x), alone)
            for start, size in ((0, 16), (5, 17), (31, 33), (100, 128), (7, 293)):   # partial blocks, any offset
                assert torch.equal(amx.matmul(x[start:start + size]), alone[start:start + size])
    finally:
        native.set_threads(saved)


def test_a_call_on_named_rows_reads_and_writes_them_in_place_with_their_own_bits():
    weight, bias = _weights(960, 576, seed=6, bias=True)
    amx = native.AmxWeights(weight, bias)
    x = torch.randn((200, 576), generator=torch.Generator().manual_seed(7)).bfloat16()
    alone = amx.matmul(x)
    # runs of blocks (one 32-row tile block inside a run, others across two), a lone row, the rows reversed
    for rows in (list(range(3, 40)) + list(range(90, 170)), [150], list(range(199, 120, -1))):
        index = torch.tensor(rows, dtype=torch.int64)
        out = torch.full((200, 960), 7.0, dtype=torch.bfloat16)
        assert amx.matmul(x, out, index) is out
        assert torch.equal(out[index], alone[index])
        untouched = torch.ones(200, dtype=torch.bool)
        untouched[index] = False
        assert (out[untouched] == 7.0).all()                       # no other row written
    out = torch.zeros((200, 960), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="within"):
        amx.matmul(x, out, torch.tensor([0, 200]))
    with pytest.raises(ValueError, match="output"):
        amx.matmul(x, None, torch.tensor([0, 1]))
    assert (out == 0).all()
    # and the integer kernel's calls of up to 16 rows (a span's short blocks gathered)
    dense = DenseLinear(weight)
    quantized = BlockLinear(native.pack_q8(*native.quantize_q8(weight)), dense)
    for rows in ([5, 6, 7, 40, 41, 199], [17], list(range(60, 44, -1))):
        index = torch.tensor(rows, dtype=torch.int64)
        out = torch.full((200, 960), 7.0, dtype=torch.bfloat16)
        assert quantized(x, out, index) is out
        assert torch.equal(out[index], quantized(x[index]))
        assert (out.index_fill(0, index, 7.0) == 7.0).all()


def test_shapes_the_kernel_does_not_take_stay_on_onednn():
    assert not native.AmxWeights.takes(torch.zeros((96, 48), dtype=torch.bfloat16))     # K not a multiple of 32
    assert not native.AmxWeights.takes(torch.zeros((80, 64), dtype=torch.bfloat16))     # N not a multiple of 32
    assert not native.AmxWeights.takes(torch.zeros((96, 64)))                            # float32
    odd = DenseLinear(*_weights(80, 64, seed=5))
    assert odd.amx is None and not odd.mergeable(128)
    assert DenseLinear(*_weights(96, 64, seed=5)).mergeable(128)


def test_a_span_runs_each_linear_over_its_blocks_in_one_call_where_rows_never_depend_on_it():
    dense = DenseLinear(*_weights(96, 64, seed=6))
    span = _Span(0, (128, 128, 99, 7), None, None)
    assert span._calls(dense) == [[(0, 362)]]
    # a quantized linear runs forwards of up to KERNEL_MAX_ROWS rows on its integer kernel: those stay apart
    quantized = BlockLinear(native.pack_q8(*native.quantize_q8(dense.weight)), dense)
    assert quantized.mergeable(KERNEL_MAX_ROWS + 1) and not quantized.mergeable(KERNEL_MAX_ROWS)
    assert span._calls(quantized) == [[(0, 355)], [(355, 7)]]
    # the dense blocks gather into one call wherever they are
    assert _Span(0, (9, 128, 128, 5, 64), None, None)._calls(quantized) == [[(9, 256), (270, 64)], [(0, 9)],
                                                                            [(265, 5)]]


def test_a_span_gives_every_block_the_bits_of_its_own_call_however_its_calls_gather_them():
    dense = DenseLinear(*_weights(96, 64, seed=7))
    quantized = BlockLinear(native.pack_q8(*native.quantize_q8(dense.weight)), dense)
    sizes = (9, 128, 128, 5, 64, 3, 7, 12)
    x = torch.randn((sum(sizes), 64), generator=torch.Generator().manual_seed(8)).bfloat16()
    alone = torch.cat([quantized(x[start:start + size]) for start, size in _Span(0, sizes, None, None).blocks()])
    assert torch.equal(_Span(0, sizes, None, None).linear(quantized, x), alone)
    # short blocks share calls of up to 16 rows where the start-up check finds their rows independent
    small = span_merges.check_small([quantized], KERNEL_MAX_ROWS, lambda rows: None)
    assert small == {span_merges.shape_key(quantized)}
    merges = span_merges.SpanMerges(128, frozenset(), 1, small, KERNEL_MAX_ROWS)
    span = _Span(0, sizes, None, merges)
    assert span._calls(quantized) == [[(9, 256), (270, 64)], [(0, 9), (265, 5), (334, 2)], [(336, 16)], [(352, 4)]]
    assert torch.equal(span.linear(quantized, x), alone)
    into = torch.full((20, 96), float("nan"), dtype=torch.bfloat16)
    assert quantized(x[:20], into) is into and torch.equal(into, quantized(x[:20]))     # the dense path
    assert quantized(x[:5], into[:5]) is not None and torch.equal(into[:5], quantized(x[:5]))
    with pytest.raises(ValueError, match="does not take"):
        dense(x[:20], torch.empty((20, 96)))                                            # float32
    with pytest.raises(ValueError, match="does not take"):
        dense(x[:20], torch.empty((96, 40), dtype=torch.bfloat16).t())                  # not contiguous


def test_the_kernel_is_part_of_the_cache_scope_and_can_be_turned_off(monkeypatch):
    on = plan_weights("bf16", torch.bfloat16, None).scope_name
    int4 = plan_weights("int4", torch.bfloat16, embedded_gguf_path()).scope_name
    monkeypatch.setenv("SEGCACHE_AMX", "off")
    monkeypatch.setenv("SEGCACHE_BF16_ATTENTION", "off")     # else the AVX512-BF16 attention is in the scope
    assert native.amx_unavailable_reason() == "SEGCACHE_AMX=off"
    assert DenseLinear(*_weights(96, 64, seed=7)).amx is None
    assert plan_weights("bf16", torch.bfloat16, None).scope_name == "bf16" != on
    assert "amx" not in plan_weights("int4", torch.bfloat16, embedded_gguf_path()).scope_name and "amx" in int4
    assert plan_weights("float32", torch.float32, None).scope_name == "float32"
