"""Prefill forwards that span several blocks: every block's KV and the last logits equal, bit for bit,
those of one forward per block, however the blocks are grouped into forwards (float32, bfloat16, and
the int8 and int4 weight formats, whose integer kernels take blocks of up to 16 rows).

Blocks of 64 and more run on the runner's threads, smaller ones on one: a span mixes both.
"""

import pytest
import torch

from segcache.bench.weights_probe import held_text_ids
from segcache.engine.runner import Runner

PART_TOKENS = (150, 5, 70, 130, 3)
BLOCK = 64

NUMERICS = [("float32", "float32"), ("bfloat16", "bf16"), ("bfloat16", "int8"), ("bfloat16", "int4")]


def block_sizes() -> list[int]:
    """Blocks of at most BLOCK tokens at fixed offsets from each part's start: 64 64 22 5 64 6 64 64 2 3."""
    sizes = []
    for part in PART_TOKENS:
        sizes += [min(BLOCK, part - start) for start in range(0, part, BLOCK)]
    return sizes


def prefill(runner: Runner, ids: tuple[int, ...], groups: list[list[int]]):
    """Prefill `ids` in one forward per group of consecutive blocks; (KV of every position, last logits)."""
    state = runner.start([], len(ids) + 1)
    position = 0
    for group in groups:
        runner.prefill_span(state, ids[position:position + sum(group)], tuple(group))
        position += sum(group)
    return runner.part_kv(state, 0), state.last_logits


def spans(sizes: list[int], limit: int, first: int = 0) -> list[list[int]]:
    """The first `first` blocks alone (as after a cache hit), then spans of whole blocks up to `limit` tokens."""
    groups, current = [[s] for s in sizes[:first]], []
    for size in sizes[first:]:
        if current and sum(current) + size > limit:
            groups.append(current)
            current = []
        current.append(size)
    return groups + [current]


@pytest.fixture(scope="module", params=NUMERICS, ids=["/".join(n) for n in NUMERICS])
def runner_and_ids(request, load):
    dtype, weights = request.param
    loaded = load("default", dtype, weights)
    ids = tuple((held_text_ids(loaded.tokenizer) * 4)[:sum(PART_TOKENS)])
    return Runner(loaded, threads=2), ids


@pytest.mark.parametrize("grouping", ["one span", "spans of 128", "blocks then a span", "split at a boundary"])
def test_a_span_gives_every_block_the_bits_of_its_own_forward(runner_and_ids, grouping):
    runner, ids = runner_and_ids
    sizes = block_sizes()
    assert len(sizes) == 10 and sum(sizes) == len(ids)
    groups = {"one span": spans(sizes, len(ids)), "spans of 128": spans(sizes, 128),
              "blocks then a span": spans(sizes, len(ids), first=3),
              "split at a boundary": [sizes[:5], sizes[5:]]}[grouping]
    assert any(len(g) > 1 for g in groups), "some forward must span several blocks"
    base_kv, base_logits = prefill(runner, ids, [[s] for s in sizes])
    kv, logits = prefill(runner, ids, groups)
    assert torch.equal(kv, base_kv), "KV differs from one forward per block"
    assert torch.equal(logits, base_logits), "last logits differ from one forward per block"


def test_a_span_is_one_forward_of_its_tokens(load):
    runner = Runner(load("default", "bfloat16", "bf16"))
    state = runner.start([], 40)
    runner.prefill_span(state, tuple(range(100, 130)), (8, 8, 8, 6))
    assert (state.num_tokens, runner.num_prefill_tokens) == (30, 30)
    assert state.last_logits.shape == (runner.model.config.vocab_size,)


def test_the_start_up_check_finds_spans_bit_identical(load):
    runner = Runner(load("default", "bfloat16", "bf16"), threads=2)
    assert runner.spans_agree()
    assert runner.num_prefill_tokens == 0, "the check must not count as served prefill"


@pytest.mark.parametrize("span_tokens", [512, 0])
def test_the_engine_spans_only_what_its_check_and_flag_allow(load, span_tokens):
    from segcache.config import ServeConfig
    from segcache.engine.engine import Engine

    engine = Engine(ServeConfig(model="tiny", dtype="bfloat16", prefill_span_tokens=span_tokens),
                    loaded=load("tiny", "bfloat16"))
    try:
        assert engine.spans.span_tokens == span_tokens
        assert engine.executor.config.prefill_span_tokens == span_tokens
        idle = engine.executor.config.idle_prefill_span_tokens
        merge = span_tokens and engine.executor.runner.linears_merge(engine.executor.config.block_tokens)
        assert idle == (max(span_tokens, ServeConfig().idle_prefill_span_tokens) if merge else span_tokens)
        assert ("bit-identical" if span_tokens else "one block per forward") in engine.spans.reason
    finally:
        engine.close()
