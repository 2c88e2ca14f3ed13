"""The attention kernels on AMX tiles, and on AVX512-BF16 vectors for CPUs without AMX. The prefill's
(engine/kernels/amx_attention.c) computes causal grouped-query attention, gives a query the same bits in a
call of any size, at any place and on any thread count, reads matched tree blocks in place with the same
bits, and where it serves the prefill attends a whole span in one call, with the cache scope saying so. The
decode step's (kernels/decode.c) shares a tree block's products between the sequences that read it and
gives each its lone bits."""

import pytest
import torch

from segcache.engine import native
from segcache.engine.weights import plan_weights

KERNELS = {"amx": (native.amx_attention, native.amx_unavailable_reason),
           "bf16": (native.bf16_attention, native.bf16_attention_unavailable_reason)}


@pytest.fixture(params=list(KERNELS))
def attention(request):
    kernel, unavailable = KERNELS[request.param]
    if unavailable() is not None:
        pytest.skip(f"{request.param} attention unavailable: {unavailable()}")
    return kernel


def _attention_reference(qkv, keys, values, start, heads, kv_heads):
    """Causal grouped-query attention in float64: query t sees keys 0 .. start + t."""
    num_rows, dim = qkv.shape[0], 64
    q = qkv[:, :heads * dim].view(num_rows, heads, dim).transpose(0, 1).double()
    k = keys[:, :start + num_rows].double().repeat_interleave(heads // kv_heads, 0)
    v = values[:, :start + num_rows].double().repeat_interleave(heads // kv_heads, 0)
    scores = q @ k.transpose(1, 2) / dim ** 0.5
    hidden = torch.arange(start + num_rows)[None, :] > torch.arange(start, start + num_rows)[:, None]
    weights = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)
    return (weights @ v).transpose(0, 1).reshape(num_rows, heads * dim)


@pytest.mark.parametrize("start,num_rows", [(0, 1), (0, 45), (100, 128), (37, 300)])
def test_attention_computes_causal_grouped_query_softmax(attention, start, num_rows):
    generator = torch.Generator().manual_seed(start + num_rows)
    heads, kv_heads, capacity = 9, 3, 512
    keys = torch.randn((kv_heads, capacity, 64), generator=generator).bfloat16()
    values = torch.randn((kv_heads, capacity, 64), generator=generator).bfloat16()
    qkv = torch.randn((num_rows, (heads + 2 * kv_heads) * 64), generator=generator).bfloat16()
    out = attention(qkv, keys, values, start, heads, kv_heads, 64)
    exact = _attention_reference(qkv, keys, values, start, heads, kv_heads)
    # probabilities rounded to bfloat16 for the second product, one rounding of the output
    assert out.shape == (num_rows, heads * 64) and (out.double() - exact).abs().max() < 0.02


def test_a_query_gets_its_own_bits_in_any_call_and_on_any_threads(attention):
    generator = torch.Generator().manual_seed(11)
    heads, kv_heads, capacity, start, num_rows = 9, 3, 700, 61, 400
    keys = torch.randn((kv_heads, capacity, 64), generator=generator).bfloat16()
    values = torch.randn((kv_heads, capacity, 64), generator=generator).bfloat16()
    qkv = torch.randn((num_rows, (heads + 2 * kv_heads) * 64), generator=generator).bfloat16()
    saved = native.threads()
    try:
        native.set_threads(2)
        whole = attention(qkv, keys, values, start, heads, kv_heads, 64)
        for threads in (1, 3):
            native.set_threads(threads)
            assert torch.equal(attention(qkv, keys, values, start, heads, kv_heads, 64), whole)
            for offset, size in ((0, 1), (5, 17), (64, 64), (130, 128), (399, 1)):   # any queries, any start
                part = attention(qkv[offset:offset + size], keys, values, start + offset, heads,
                                            kv_heads, 64)
                assert torch.equal(part, whole[offset:offset + size])
    finally:
        native.set_threads(saved)
    # keys past the queries' positions are never read: garbage there changes nothing
    keys[:, start + num_rows:] = float("nan")
    values[:, start + num_rows:] = float("nan")
    assert torch.equal(attention(qkv, keys, values, start, heads, kv_heads, 64), whole)


def test_attention_reads_the_positions_that_tree_blocks_hold_from_them_with_the_same_bits(attention):
    """A prefill after a matched chain reads the chain's positions from the tree's blocks (pages), not from
    copies in its buffer: the same values, so the same bits, wherever the blocks' edges fall against the
    kernel's 64-key blocks; the buffer's positions before the pages' end are never read."""
    from segcache.engine.fused_decode import Page, page_table

    generator = torch.Generator().manual_seed(12)
    layers, heads, kv_heads, capacity, start, num_rows = 3, 9, 3, 400, 201, 150
    cache = torch.randn((layers, 2, kv_heads, capacity, 64), generator=generator).bfloat16()
    qkv = torch.randn((num_rows, (heads + 2 * kv_heads) * 64), generator=generator).bfloat16()
    layer = 1
    whole = attention(qkv, cache[layer, 0], cache[layer, 1], start, heads, kv_heads, 64)
    for edges in ((0, 201), (0, 37, 128, 201), (0, 64, 192), (0, 5)):      # tree blocks' positions
        blocks = [cache[:, :, :, a:b].clone() for a, b in zip(edges, edges[1:])]
        buffer = cache.clone()
        buffer[:, :, :, :edges[-1]] = float("nan")                         # what the buffer never gets
        pages = tuple(Page(block, a) for block, a in zip(blocks, edges))
        table, counts = page_table((pages,), (start,), torch.bfloat16)
        assert int(counts[0]) == len(pages)
        got = attention(qkv, buffer[layer, 0], buffer[layer, 1], start, heads, kv_heads, 64,
                                   table, layer)
        assert torch.equal(got, whole)
    # pages that leave a gap, or reach the positions being computed, are refused
    for rows in (((blocks[0].data_ptr(), 0, 1, 5, 5),), ((cache.data_ptr(), 0, 0, start + 1, capacity),)):
        with pytest.raises(RuntimeError, match="refused"):
            attention(qkv, buffer[layer, 0], buffer[layer, 1], start, heads, kv_heads, 64,
                                 torch.tensor(rows, dtype=torch.int64), layer)


def test_attention_refuses_what_it_does_not_take(attention):
    keys = torch.zeros((2, 64, 32), dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="refused"):
        attention(torch.zeros((4, 8 * 32), dtype=torch.bfloat16), keys, keys, 0, 4, 2, 32)
    keys = torch.zeros((2, 8, 64), dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="refused"):       # past the buffer's capacity
        attention(torch.zeros((4, 8 * 64), dtype=torch.bfloat16), keys, keys, 6, 4, 2, 64)


def test_the_two_kernels_agree_to_the_rounding_of_their_sums():
    """Where a CPU has both, they compute the same attention; their bits may differ (the products sum in
    another order), which is why each is named in the cache scope."""
    if any(unavailable() is not None for _, unavailable in KERNELS.values()):
        pytest.skip("needs both kernels")
    generator = torch.Generator().manual_seed(5)
    keys = torch.randn((3, 300, 64), generator=generator).bfloat16()
    values = torch.randn((3, 300, 64), generator=generator).bfloat16()
    qkv = torch.randn((200, 15 * 64), generator=generator).bfloat16()
    amx = native.amx_attention(qkv, keys, values, 100, 9, 3, 64)
    assert (amx.float() - native.bf16_attention(qkv, keys, values, 100, 9, 3, 64).float()).abs().max() < 0.02


@torch.inference_mode()
def test_without_amx_the_prefill_attends_a_whole_span_in_one_call_and_can_be_turned_off(load, monkeypatch):
    """Where the AVX512-BF16 attention serves (no AMX), a bfloat16 prefill runs on our kernels (attention over a
    whole span in one call, the row-wise ops fused; the linears block by block); a span and its blocks one by
    one give the same KV and logits; the kernels are in the cache scope, and
    SEGCACHE_BF16_ATTENTION=off takes torch's forward block by block, under another scope."""
    from segcache.engine.runner import Runner

    if native.amx_unavailable_reason() is None or native.bf16_attention_unavailable_reason() is not None:
        pytest.skip("the AVX512-BF16 attention serves only CPUs with AVX512-BF16 and without AMX")
    runner = Runner(load("default", "bfloat16", "bf16"))
    assert runner.lean.native_prefill and not runner.lean.amx_prefill
    assert "avx512-bf16" in runner.kernel_paths()["prefill"]
    assert runner.spans_agree((64, 64, 21))
    on = plan_weights("bf16", torch.bfloat16, None).scope_name
    assert on == f"bf16/prefill-{native.kernel_id()}"
    monkeypatch.setenv("SEGCACHE_BF16_ATTENTION", "off")
    assert plan_weights("bf16", torch.bfloat16, None).scope_name == "bf16"


@torch.inference_mode()
def test_decode_attention_on_shared_blocks_gives_sequences_that_share_a_prefix_their_lone_bits(load):
    """The fused decode step's attention over packed key blocks (kernels/decode.c `attend_piece_amx`), on AMX
    tiles or AVX512-BF16 vectors: sequences that read the same tree block multiply its keys with all their
    query rows in one product. Each still
    gets, bit for bit, what it gets decoded alone, or alone from its buffer's copies of the block (packed
    into tile order in each step, where the tree block's tiles are packed once)."""
    from segcache.engine.fused_decode import FusedDecode
    from segcache.engine.runner import Runner

    runner = Runner(load("default", "bfloat16", "int4"), threads=2)
    if FusedDecode.block_attention(runner.lean) == 0:
        pytest.skip("the decode step attends per sequence here (no AVX512-BF16)")
    assert runner.lean.fused is not None
    tokenizer = runner.loaded.tokenizer
    shared_ids = tuple(tokenizer("Rules every agent follows: cite the file you read. " * 60)["input_ids"])[:600]
    warm = runner.start([], len(shared_ids))
    runner.prefill_part(warm, shared_ids)
    shared = runner.part_kv(warm, 0)              # a tree block: positions 0..599, read in place by decode
    states = []
    for agent in range(7):                        # 21 query rows per KV head: two row tiles
        suffix = tuple(tokenizer(f"Agent {agent} asks: " + "what next? " * agent)["input_ids"])
        state = runner.start([shared], len(shared_ids) + len(suffix) + 4)
        runner.prefill_part(state, suffix)
        states.append(state)
    lone_prompt = tuple(tokenizer("A sequence with no shared block. " * 3)["input_ids"])
    states.append(runner.start([], len(lone_prompt) + 4))
    runner.prefill_part(states[-1], lone_prompt)
    assert all(s.pages for s in states[:-1]) and len({s.num_tokens for s in states}) == len(states)
    snapshot = [(s.cache.clone(), s.num_tokens) for s in states]
    first = [int(s.last_logits.argmax()) for s in states]

    def restore():
        for state, (cache, num_tokens) in zip(states, snapshot):
            state.cache.copy_(cache)
            state.num_tokens = num_tokens

    batched = [torch.stack(runner.decode_batch(states, first))]
    batched.append(torch.stack(runner.decode_batch(states, [int(row.argmax()) for row in batched[0]])))
    # the shared block's whole key blocks were packed into tile order once, for all 7 agents (the pass with
    # pages reads those packs; the pass without reads the buffer's copies and packs them every step)
    assert all(len(s.packs) == 600 // 64 for s in states[:-1]) and not states[-1].packs
    assert len({s.packs[0].data_ptr() for s in states[:-1]}) == 1
    for with_pages in (True, False):
        restore()
        for index, state in enumerate(states):
            if not with_pages:
                runner.fill_buffer(state)
            pages, state.pages = state.pages, state.pages if with_pages else ()
            assert torch.equal(runner.decode_step(state, first[index]), batched[0][index])
            assert torch.equal(runner.decode_step(state, int(batched[0][index].argmax())), batched[1][index])
            state.pages = pages


@torch.inference_mode()
def test_a_sequence_packs_each_whole_block_of_its_buffer_once_with_the_bits_of_packing_it_every_step(load):
    """Past each 64th token of its own, a decoding sequence packs that block into tile order once and every later
    step reads the pack (Runner._pack_blocks); a step given no packs packs every block itself: the same bits."""
    from segcache.engine.fused_decode import FusedDecode
    from segcache.engine.runner import Runner

    runner = Runner(load("default", "bfloat16", "int4"), threads=2)
    if FusedDecode.block_attention(runner.lean) == 0:
        pytest.skip("the decode step attends per sequence here (no AVX512-BF16)")
    prompt = tuple(runner.loaded.tokenizer("Notes on the build: " * 30)["input_ids"])[:126]
    packed, unpacked = (runner.start([], len(prompt) + 8) for _ in range(2))
    for state in (packed, unpacked):
        runner.prefill_part(state, prompt)
    token = int(packed.last_logits.argmax())
    for step in range(5):                          # positions 126..130: the buffer's second block becomes whole
        whole = packed.num_tokens // 64           # the blocks written before this step's position
        logits = runner.decode_step(packed, token)
        assert len(packed.packs) == whole
        alone = runner.lean.decode((unpacked.cache,), (unpacked.num_tokens,), torch.tensor((token,)), ((),), None)[0]
        unpacked.num_tokens += 1
        assert torch.equal(logits, alone)
        token = int(logits.argmax())
    assert len(packed.packs) == 2
