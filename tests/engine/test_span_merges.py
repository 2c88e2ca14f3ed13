"""Runs of whole blocks through one linear call: only where the start-up check found the bits of one call
per block, and then a span's blocks keep their bits whatever runs they are grouped into."""

import torch

from segcache.engine.llama import _Span
from segcache.engine.runner import Runner
from segcache.engine.span_merges import SpanMerges, shape_key


class _Linear:
    format_name, out_features, in_features = "bf16", 8, 4


def test_a_span_merges_the_longest_allowed_run_of_whole_blocks():
    linear = _Linear()
    merges = SpanMerges(128, frozenset({(shape_key(linear), 3)}), 1)   # 3 blocks agree, 2 do not
    span = _Span(0, (128, 128, 128, 128, 99, 128, 128), None, merges)
    assert span._calls(linear) == [[(0, 384)], [(384, 128)], [(512, 99)], [(611, 128)], [(739, 128)]]
    assert _Span(0, (128,) * 4, None, None)._calls(linear) == [[(0, 128)], [(128, 128)], [(256, 128)], [(384, 128)]]
    assert not merges.allows(linear, 64, 3)                          # only blocks of the checked size


@torch.inference_mode()
def test_merged_runs_keep_every_block_bit_for_bit(load):
    runner = Runner(load("default", "bfloat16"), threads=2)
    merges = runner.check_span_merges(64, 256)
    assert merges is not None and merges.checked == 4
    for count in range(2, 5):                                         # what the check allowed is what holds
        for linear in (runner.lean.layers[3].qkv, runner.lean.layers[3].down_proj):
            x = torch.randn((count * 64, linear.in_features)).bfloat16()
            runner._use_threads(64)
            blocks = torch.cat([linear(x[i * 64:(i + 1) * 64]) for i in range(count)])
            runner._use_threads(count * 64)
            assert torch.equal(linear(x), blocks) == merges.allows(linear, 64, count)
    assert runner.spans_agree((64, 64, 64, 64, 9, 64, 64))            # a span with runs: each block's own bits


def test_blocks_on_the_dense_weight_share_one_call_up_to_the_checked_rows():
    linear = _Linear()                                                # dense: blocks of any size may join
    merges = SpanMerges(128, frozenset(), 1, dense=frozenset({shape_key(linear)}), dense_limit=300)
    span = _Span(0, (128, 40, 9, 100, 128, 5), None, merges)
    # 128 more rows would pass 300: that block runs alone, and the last one still joins (gathered)
    assert span._calls(linear) == [[(0, 277), (405, 5)], [(277, 128)]]
    assert _Span(0, (128, 40, 9), None, SpanMerges(128, frozenset(), 1))._calls(linear) == \
        [[(0, 128)], [(128, 40)], [(168, 9)]]


class _RowsDependOnTheCall(_Linear):
    """A kernel whose rows change with the call's size, as float32 library matmuls can."""

    out_features, in_features = 8, 32

    def __call__(self, x):
        return x @ torch.ones((self.in_features, self.out_features), dtype=x.dtype) + (x.shape[0] > 64)


def test_the_dense_check_refuses_a_kernel_whose_rows_depend_on_the_call():
    from segcache.engine.span_merges import check_dense

    assert check_dense([_RowsDependOnTheCall()], 32, 128, lambda rows: None, torch.float32) == frozenset()


@torch.inference_mode()
def test_what_the_dense_check_allows_keeps_every_row_bit_for_bit(load):
    runner = Runner(load("default", "bfloat16", "int4"), threads=2)
    merges = runner.check_dense_merges(64, 256)
    dense = merges.dense if merges is not None else frozenset()
    for linear in (runner.lean.layers[3].qkv, runner.lean.layers[3].down_proj):
        x = torch.randn((256, linear.in_features), generator=torch.Generator().manual_seed(1)).bfloat16()
        runner._use_threads(256)
        whole = linear.dense(x)
        agree = True
        for start, size in ((0, 17), (17, 64), (81, 40), (121, 135)):
            runner._use_threads(size)
            agree &= torch.equal(linear.dense(x[start:start + size]), whole[start:start + size])
        assert agree or shape_key(linear) not in dense                 # what the check allowed holds
    assert runner.spans_agree((64, 17, 40, 64, 3, 50))                  # a span whose blocks joined: their own bits
