"""The VNNI block kernels (engine/native.py): they compute what they say, give every row its own bits
whatever the batch and thread count, load a GGUF's own blocks exactly, and are what int4 and int8 serve
on where they can be built (with torch's kernels as the fallback and a different cache scope)."""

import numpy as np
import pytest
import torch

from segcache.engine import native
from segcache.engine.gguf_blocks import GgufBlocks, unpermute_rows
from segcache.engine.linear import KERNEL_MAX_ROWS, BlockLinear, DenseLinear, Int4Linear, is_row_invariant
from segcache.engine.model import embedded_gguf_path
from segcache.engine.quant import quantize_int4
from segcache.engine.weights import _pack_int4, plan_weights

pytestmark = pytest.mark.skipif(native.unavailable_reason() is not None,
                                reason=f"native kernels unavailable: {native.unavailable_reason()}")


def _reference_matmul(x: torch.Tensor, weights_dense: torch.Tensor) -> torch.Tensor:
    """What the kernels compute, in float64: x quantized per block of 32 to int8 (dx = max|x| / 127,
    round half to even), times the dequantized weights (N, K)."""
    num_rows, num_in = x.shape
    blocks = x.double().view(num_rows, num_in // 32, 32)
    dx = (x.float().view(num_rows, num_in // 32, 32).abs().amax(dim=-1, keepdim=True) / 127).double()
    inverse = torch.where(dx > 0, 1 / dx.float(), torch.zeros_like(dx.float())).double()
    q = torch.round((blocks.float() * inverse.float()).double())
    return (q * dx).view(num_rows, num_in) @ weights_dense.double().T


def _random_q4(num_out: int, num_in: int, seed: int) -> native.BlockWeights:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (num_out, num_in), generator=generator, dtype=torch.uint8)
    d = (torch.rand((num_out, num_in // 32), generator=generator) * 0.01).half().float()
    m = (-torch.rand((num_out, num_in // 32), generator=generator) * 0.08).half().float()
    return native.pack_q4(codes, d, m)


def _random_q8(num_out: int, num_in: int, seed: int) -> native.BlockWeights:
    weight = torch.randn((num_out, num_in), generator=torch.Generator().manual_seed(seed)) * 0.05
    return native.pack_q8(*native.quantize_q8(weight))


@pytest.mark.parametrize("kind", ["q4", "q8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [5, 13])          # slabs: with AMX 13 rows run on tiles, 5 without
def test_the_kernels_compute_quantized_activations_times_the_block_weights(kind, dtype, num_rows):
    weights = _random_q4(200, 576, 1) if kind == "q4" else _random_q8(200, 576, 1)    # 200: not whole groups of 16
    x = torch.randn((num_rows, 576), generator=torch.Generator().manual_seed(2)).to(dtype)
    expected = _reference_matmul(x, weights.dequantize())
    got = weights.matmul(x)
    assert got.dtype == dtype and got.shape == (num_rows, 200)
    # float32 sums of per-block products vs a float64 reference; bfloat16 adds its output rounding
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_every_row_gets_its_own_bits_whatever_the_batch_and_threads(kind):
    weights = _random_q4(3072, 576, 3) if kind == "q4" else _random_q8(3072, 576, 3)
    dense = DenseLinear(weights.dequantize().bfloat16())
    linear = BlockLinear(weights, dense)
    assert is_row_invariant(linear)        # batch sizes 1..KERNEL_MAX_ROWS, each row against itself alone
    many = torch.randn((40, 576), generator=torch.Generator().manual_seed(5)).bfloat16()
    alone = torch.cat([weights.matmul(many[row:row + 1]) for row in range(40)])
    assert torch.equal(weights.matmul(many), alone)          # the kernel itself past 16 rows (fused step batches)
    x = torch.randn((KERNEL_MAX_ROWS, 576), generator=torch.Generator().manual_seed(4)).bfloat16()
    results = []
    for threads in (1, 2, 3):
        native.set_threads(threads)
        results.append(linear(x))
    native.set_threads(2)
    assert all(torch.equal(result, results[0]) for result in results)


@pytest.mark.skipif(native.amx_unavailable_reason() is not None, reason="compares tile products with VNNI: needs AMX")
@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_the_slab_kernels_give_the_same_bits_on_tiles_and_on_vnni_alone(kind, monkeypatch):
    weights = _random_q4(200, 576, 6) if kind == "q4" else _random_q8(200, 576, 6)
    x = torch.randn((40, 576), generator=torch.Generator().manual_seed(7)).bfloat16()
    tiles = weights.matmul(x)
    monkeypatch.setenv("SEGCACHE_AMX", "off")
    assert native.slab_tiles() == 0
    assert torch.equal(weights.matmul(x), tiles)


def test_inputs_that_are_not_whole_pairs_of_blocks_are_refused():
    weights = _random_q4(8, 128, 5)
    weights.num_in = 96
    with pytest.raises(RuntimeError, match="refused"):
        weights.matmul(torch.zeros((1, 96)))


@pytest.fixture(scope="module")
def blocks(model_dir):
    return GgufBlocks(embedded_gguf_path())


def test_the_gguf_q4_1_blocks_pack_exactly(blocks):
    import gguf

    reader = {t.name: t for t in gguf.GGUFReader(embedded_gguf_path()).tensors}
    for name, heads in (("blk.5.ffn_up.weight", None), ("blk.29.attn_q.weight", 9)):
        tensor = reader[name]
        expected = torch.from_numpy(gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type))
        if heads:
            expected = expected[unpermute_rows(expected.shape[0], heads)]
        assert torch.equal(_pack_int4(blocks.int4(name)).dequantize(), expected)


def test_the_q8_0_embedding_packs_exactly_as_the_output_layer(blocks, load):
    embedding = load("default", "float32", "float32").model.model.embed_tokens.weight
    codes, scale = blocks.q8_0("token_embd.weight")
    assert torch.equal(native.pack_q8(codes, scale).dequantize(), embedding)


def test_int4_on_the_default_model_runs_every_projection_on_the_block_kernels(load):
    from segcache.engine.runner import Runner

    loaded = load("default", "bfloat16", "int4")
    prefill = "amx" if native.amx_unavailable_reason() is None else \
        "prefill" if native.bf16_attention_unavailable_reason() is None else None
    assert loaded.weights.kernels == "vnni" and loaded.weights.scope_name == f"int4/vnni-{native.kernel_id()}" + (
        f"+{prefill}-{native.kernel_id()}" if prefill else "")
    forward = Runner(loaded).lean
    kinds = {name: linear.blocks.kind for name, linear in forward.projections()}
    assert kinds.pop("lm_head") == "q8" and set(kinds.values()) == {"q4"}
    assert all(is_row_invariant(linear, batch_sizes=(1, 3, 16)) for _, linear in list(forward.projections())[:4])


def test_the_kernels_are_part_of_the_cache_scope_and_torch_is_the_fallback(monkeypatch, model_dir):
    vnni = plan_weights("int4", torch.bfloat16, embedded_gguf_path())
    monkeypatch.setenv("SEGCACHE_KERNELS", "torch")
    fallback = plan_weights("int4", torch.bfloat16, embedded_gguf_path())
    assert (vnni.kernels, fallback.kernels) == ("vnni", "torch")
    assert "SEGCACHE_KERNELS=torch" in fallback.reason and vnni.scope_name != fallback.scope_name
    from segcache.engine.weights import ProjectionBuilder

    weight = torch.randn((64, 128), generator=torch.Generator().manual_seed(6)).bfloat16()
    torch_plan = plan_weights("int4", torch.bfloat16, None)
    assert isinstance(ProjectionBuilder(torch_plan, torch.bfloat16).build(("x",), [weight]), Int4Linear)
    monkeypatch.delenv("SEGCACHE_KERNELS")
    vnni_plan = plan_weights("int4", torch.bfloat16, None)
    assert isinstance(ProjectionBuilder(vnni_plan, torch.bfloat16).build(("x",), [weight]), BlockLinear)


def test_load_time_int4_of_a_model_without_blocks_is_near_the_weights():
    weight = torch.randn((32, 128), generator=torch.Generator().manual_seed(7))
    packed = _pack_int4(quantize_int4(weight))
    step = (weight.view(32, 4, 32).amax(-1) - weight.view(32, 4, 32).amin(-1)) / 15
    assert ((packed.dequantize() - weight).abs() <= step.repeat_interleave(32, dim=1) * 0.51 + 1e-3).all()


# ---------------------------------------------------------------- the fused decode step


def _greedy(runner, prompt: list[int], steps: int, fused: bool = True):
    """Token ids and logits of `steps` greedy decode steps after `prompt`, fused or per tensor op."""
    lean, saved = runner.lean, runner.lean.fused
    lean.fused = saved if fused else None
    try:
        state = runner.start([], len(prompt) + steps + 1)
        runner.prefill_part(state, tuple(prompt))
        token, tokens, logits = int(state.last_logits.argmax()), [], []
        for _ in range(steps):
            row = runner.decode_step(state, token)
            token = int(row.argmax())
            tokens.append(token)
            logits.append(row)
        return tokens, torch.stack(logits)
    finally:
        lean.fused = saved


@pytest.fixture(scope="module")
def int4_runner(load):
    from segcache.engine.runner import Runner

    return Runner(load("default", "bfloat16", "int4"), threads=2)


def test_the_default_model_decodes_int4_in_one_native_call_and_agrees_with_the_tensor_ops(int4_runner):
    assert int4_runner.lean.fused is not None, int4_runner.lean.fused_reason
    tokenizer = int4_runner.loaded.tokenizer
    for text in ("The capital of France is a city called", "def fibonacci(n):", "Water boils at"):
        prompt = tokenizer(text)["input_ids"]
        fused_tokens, fused_logits = _greedy(int4_runner, prompt, 2)
        ops_tokens, ops_logits = _greedy(int4_runner, prompt, 2, fused=False)
        # not the same bits (a float32 residual stream and attention, no bfloat16 rounding between ops): the
        # same first choice and nearly the same distribution. (Measured against float32 dense weights, the
        # two are equally far: KL 0.004-0.009 fused vs 0.001-0.013 per op on these prompts.)
        assert fused_tokens[0] == ops_tokens[0]
        log_fused, log_ops = (torch.log_softmax(l[0].float(), -1) for l in (fused_logits, ops_logits))
        assert torch.nn.functional.kl_div(log_fused, log_ops, log_target=True, reduction="sum") < 0.05
        assert torch.equal(_greedy(int4_runner, prompt, 2)[1], fused_logits)       # and deterministic


@torch.inference_mode()
def test_a_fused_row_has_the_same_bits_in_any_batch_and_on_any_thread_count(int4_runner):
    tokenizer, lean = int4_runner.loaded.tokenizer, int4_runner.lean
    prompts = [tokenizer(text)["input_ids"] for text in ("Once upon a time", "def add(a, b):", "Paris is",
                                                          "1, 2, 3, 4,", "The weather today")]
    states = []
    for prompt in prompts:
        state = int4_runner.start([], len(prompt) + 4)
        int4_runner.prefill_part(state, tuple(prompt))
        states.append(state)
    first = torch.tensor([int(s.last_logits.argmax()) for s in states])
    positions = tuple(s.num_tokens for s in states)
    snapshot = [s.cache.clone() for s in states]
    batched = lean.fused(tuple(s.cache for s in states), positions, first, threads=2)
    batched_kv = [s.cache[:, :, :, :p + 1].clone() for s, p in zip(states, positions)]   # the rest is unwritten
    for threads in (1, 2, 3):
        for index, state in enumerate(states):
            state.cache.copy_(snapshot[index])
            alone = lean.fused((state.cache,), (positions[index],), first[index:index + 1], threads=threads)
            assert torch.equal(alone[0], batched[index])
            assert torch.equal(state.cache[:, :, :, :positions[index] + 1], batched_kv[index])


def test_the_fused_step_without_tile_products_keeps_the_same_guarantees(monkeypatch, int4_runner):
    """The fused step on the slabs without tile products (SEGCACHE_AMX=off; what a CPU without AMX runs): rows
    that keep their bits in any batch, and the greedy choice of the default kernels up to their float rounding
    (with AMX, the attention's tile products round otherwise)."""
    from segcache.engine.fused_decode import first_variant_row
    from segcache.engine.model import load_model
    from segcache.engine.runner import Runner

    monkeypatch.setenv("SEGCACHE_AMX", "off")
    runner = Runner(load_model("default", "bfloat16", weights="int4"), threads=2)
    assert runner.lean.fused is not None and runner.lean.fused.model.slabs == 2
    assert first_variant_row(runner.lean, 6) is None
    prompt = runner.loaded.tokenizer("The capital of France is a city called")["input_ids"]
    other_tokens, other_logits = _greedy(runner, prompt, 2)
    tokens, logits = _greedy(int4_runner, prompt, 2)
    assert other_tokens[0] == tokens[0]
    log_other, log_default = (torch.log_softmax(l[0].float(), -1) for l in (other_logits, logits))
    assert torch.nn.functional.kl_div(log_other, log_default, log_target=True, reduction="sum") < 0.05


def test_the_thread_count_follows_the_measured_step_time():
    from segcache.engine.fused_decode import ThreadChooser

    chooser = ThreadChooser(most=2)
    assert chooser.pick(1) == 2                                    # each count is tried first
    chooser.record(2, 0.010, 1)
    assert chooser.pick(1) == 1
    chooser.record(1, 0.030, 1)
    picks = [chooser.pick(1) for _ in range(ThreadChooser.EXPLORE)]
    assert picks.count(2) == ThreadChooser.EXPLORE - 1 and picks.count(1) == 1   # the faster, and one look back
    for _ in range(5):                                              # the cores got busy: two threads now crawl
        chooser.record(2, 0.500, 1)
    assert chooser.pick(1) == 1
    assert chooser.pick(16) == 2                                   # a batch size class of its own
    assert ThreadChooser(most=1).pick(8) == 1


def test_the_start_up_check_verifies_the_fused_step_and_batches(int4_runner):
    from segcache.engine.fused_decode import first_variant_row
    from segcache.engine.invariance import decide_batching

    assert first_variant_row(int4_runner.lean, 16) is None
    verdict = decide_batching("on", [], torch.bfloat16, 24, lambda size: first_variant_row(int4_runner.lean, size))
    assert verdict.batched and "fused decode step" in verdict.reason and "24" in verdict.reason


def test_decoding_past_the_kv_buffer_is_refused(int4_runner):
    state = int4_runner.start([], 3)
    int4_runner.prefill_part(state, (1, 2, 3))
    with pytest.raises(RuntimeError):
        int4_runner.decode_step(state, 4)


@torch.inference_mode()
def test_a_cached_prefix_read_from_its_tree_blocks_gives_the_bits_of_the_buffer(int4_runner):
    """Decode reads a sequence's matched blocks where the tree keeps them (shared by every sequence that
    matched them) instead of the buffer's copies: the same values, so the same logits, bit for bit."""
    from segcache.engine.fused_decode import Page

    tokenizer, lean = int4_runner.loaded.tokenizer, int4_runner.lean
    ids = tuple(tokenizer("A block of rules. " * 20 + "Then a question:")["input_ids"])
    warm = int4_runner.start([], len(ids))
    blocks = []
    for start in range(0, len(ids), 37):                          # blocks of 37 tokens, a short last one
        int4_runner.prefill_part(warm, ids[start:start + 37])
        blocks.append(int4_runner.part_kv(warm, start))
    cached = sum(b.shape[3] for b in blocks[:-1])                  # all but the last block come from the "tree"

    def decode(with_pages: bool, batch: int):
        states = []
        for _ in range(batch):
            state = int4_runner.start(blocks[:-1], len(ids) + 4)
            int4_runner.prefill_part(state, ids[cached:])
            if not with_pages:
                int4_runner.fill_buffer(state)
                state.pages = ()
            states.append(state)
        rows = [int4_runner.decode_batch(states, [5] * batch) for _ in range(3)]
        return torch.stack([torch.stack(r) for r in rows]), states

    assert len(int4_runner.start(blocks[:-1], len(ids)).pages) == len(blocks) - 1
    for batch in (1, 3):
        paged, states = decode(True, batch)
        copies, _ = decode(False, batch)
        assert torch.equal(paged, copies)
    # pages that do not continue where the previous one ended, or that reach the current position, are not
    # read: the buffer serves those positions
    state = states[0]
    int4_runner.fill_buffer(state)
    snapshot = state.cache.clone()
    reference = lean.fused((state.cache,), (state.num_tokens,), torch.tensor([7]), threads=1)
    for pages in ((Page(blocks[0], 0), Page(blocks[1], 40)), (Page(blocks[0], 0), Page(warm.cache[:, :, :, :80], 37))):
        state.cache.copy_(snapshot)
        assert torch.equal(lean.fused((state.cache,), (state.num_tokens,), torch.tensor([7]), threads=1,
                                      pages=(pages,)), reference)


@torch.inference_mode()
def test_attention_over_several_pieces_merges_to_the_softmax_over_all_keys(int4_runner):
    """Past 512 positions the fused step's attention runs in pieces (any thread may take any piece) merged
    in position order: the same bits on 1, 2 or 3 threads, and the distribution of the per-op path."""
    tokenizer, lean = int4_runner.loaded.tokenizer, int4_runner.lean
    ids = tuple(tokenizer("Notes on caching: a block's keys and values are computed once. " * 90)["input_ids"])
    assert len(ids) > 2 * 512
    state = int4_runner.start([], len(ids) + 2)
    int4_runner.prefill_part(state, ids)
    snapshot, token = state.cache.clone(), torch.tensor([int(state.last_logits.argmax())])
    rows = []
    for threads in (1, 2, 3):
        state.cache.copy_(snapshot)
        rows.append(lean.fused((state.cache,), (state.num_tokens,), token, threads=threads)[0])
    assert torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2])
    state.cache.copy_(snapshot)
    saved, lean.fused = lean.fused, None
    try:
        ops = lean.decode((state.cache,), (state.num_tokens,), token)[0]
    finally:
        lean.fused = saved
    # the two paths round differently, so a near tie may swap (seen: 30.50 / 30.50 against 30.75 / 30.375)
    assert int(rows[0].argmax()) in ops.topk(2).indices.tolist()
    log_fused, log_ops = torch.log_softmax(rows[0].float(), -1), torch.log_softmax(ops.float(), -1)
    assert torch.nn.functional.kl_div(log_fused, log_ops, log_target=True, reduction="sum") < 0.05


def test_silu_mul_is_silu_of_the_gate_times_the_up_rounded_once():
    generator = torch.Generator().manual_seed(12)
    gate_up = (torch.randn((37, 2 * 1536), generator=generator) * 4).bfloat16()
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])                 # far tails and zeros
    out = native.silu_mul(gate_up)
    gate, up = gate_up.double().chunk(2, dim=-1)
    exact = gate * torch.sigmoid(gate) * up
    assert out.dtype == torch.bfloat16 and out.shape == (37, 1536)
    # float32 arithmetic, then one rounding to bfloat16: within one bfloat16 step of the exact value
    assert ((out.double() - exact).abs() <= exact.abs() * 2 ** -7 + 1e-30).all()
    assert torch.equal(native.silu_mul(gate_up[5:9]), out[5:9])               # rows on their own


def test_add_rms_norm_adds_in_place_and_normalizes_each_row():
    generator = torch.Generator().manual_seed(13)
    x = torch.randn((21, 576), generator=generator).bfloat16()
    delta = torch.randn((21, 576), generator=generator).bfloat16()
    weight = torch.rand((576,), generator=generator) + 0.5
    scaled = weight * 576 ** 0.5                                              # as engine/llama.py keeps it
    expected_x = (x.float() + delta.float()).bfloat16()
    kept = x.clone()
    h = native.add_rms_norm(x, delta, scaled, 1e-5)
    assert torch.equal(x, expected_x)                                         # the residual, rounded once
    exact = x.double() / (x.double().square().mean(-1, keepdim=True) + 1e-5).sqrt() * weight.double()
    assert ((h.double() - exact).abs() <= exact.abs() * 2 ** -7 + 1e-6).all()
    before = kept.clone()
    assert torch.equal(native.add_rms_norm(kept, None, scaled, 1e-5)[3:5],
                       native.add_rms_norm(kept[3:5].clone(), None, scaled, 1e-5))    # rows on their own
    assert torch.equal(kept, before)                                          # no delta: x unchanged


def test_rope_kv_rotates_q_in_place_and_writes_k_and_v_to_the_buffer():
    from segcache.engine.llama import _rope_table

    class Config:
        max_position_embeddings, rope_theta = 256, 10000.0

    cos, sin = _rope_table(Config(), 64, torch.bfloat16)
    heads, kv_heads, start, rows = 9, 3, 17, 40
    generator = torch.Generator().manual_seed(14)
    qkv = torch.randn((rows, (heads + 2 * kv_heads) * 64), generator=generator).bfloat16()
    original = qkv.clone()
    keys, values = torch.zeros((kv_heads, 100, 64), dtype=torch.bfloat16), torch.zeros((kv_heads, 100, 64),
                                                                                         dtype=torch.bfloat16)
    native.rope_kv(qkv, cos, sin, start, heads, kv_heads, 64, keys, values)
    heads_view = original.float().view(rows, heads + 2 * kv_heads, 64)
    c, s = cos[start:start + rows, None].float(), sin[start:start + rows, None].float()
    rotated = heads_view * c + heads_view.roll(32, dims=-1) * s               # (x2, x1) * (-sin, sin)
    q = qkv.view(rows, heads + 2 * kv_heads, 64)[:, :heads]
    assert torch.equal(q, rotated[:, :heads].bfloat16())
    assert torch.equal(keys[:, start:start + rows], rotated[:, heads:heads + kv_heads].bfloat16().transpose(0, 1))
    assert torch.equal(values[:, start:start + rows], heads_view[:, heads + kv_heads:].bfloat16().transpose(0, 1))
    assert not keys[:, :start].any() and not values[:, start + rows:].any()  # nothing else written
