"""A step's prefill share: when a prompt finishes with room left in the step's span, the next waiting
request starts in the same step and its blocks join the same forward, so short turns that arrive together
do not each wait a decode step nor each stream the weights. A request that would compute a block that an
earlier one in the forward computes too waits a step and matches it from the tree instead."""

import asyncio
import sys

import pytest
import torch

from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.request import EngineRequest, Finished, PromptReport, SamplingParams

TOKENS = 12   # the tiny random model never picks EOS greedily: every request runs to its limit


@pytest.fixture(scope="module")
def engine(load):
    engine = Engine(ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=1 << 26), loaded=load("tiny", "bfloat16"))
    yield engine
    engine.close()


def request(text: str) -> EngineRequest:
    return EngineRequest("tenant", "chat", messages=({"role": "user", "content": text},),
                         sampling=SamplingParams(max_tokens=TOKENS, temperature=0))


async def _finished(engine: Engine, req: EngineRequest) -> Finished:
    events = [event async for event in engine.stream(req)]
    return events[-1]


def test_short_prompts_that_arrive_together_prefill_in_one_step_and_decode_together(engine):
    runner = engine.executor.runner
    requests = [request(f"Agent {i}: what is the next step of the plan?") for i in range(4)]
    tokens = sum(len(part.token_ids) for r in requests for part in engine.executor.build_prompt(r).parts)
    config = engine.executor.config
    assert tokens <= max(config.prefill_span_tokens, config.block_tokens)     # all four fit one step's share

    async def together():
        return await asyncio.gather(*[_finished(engine, r) for r in requests])

    forwards, prefills = runner.num_decode_forwards, runner.num_prefill_forwards
    finished = _at_once(together)
    assert all(f.completion_tokens == TOKENS for f in finished)
    # each first token comes from its prefill's logits, then one decode forward per token for all four at
    # once; one request prefilled per step would take 3 forwards more, its stragglers decoding alone
    assert runner.num_decode_forwards - forwards == TOKENS - 1
    # and the four prompts in one forward where our kernels run the prefill (the tiny model's head size is
    # not theirs: one forward each)
    assert runner.num_prefill_forwards - prefills == (1 if runner.lean.native_prefill else 4)
    engine.tree.check()


def _at_once(run):
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)     # the jobs reach the engine's queue before its worker looks again
    try:
        return asyncio.run(run())
    finally:
        sys.setswitchinterval(interval)


async def _events(engine: Engine, req: EngineRequest) -> list:
    return [event async for event in engine.stream(req)]


@pytest.fixture(scope="module")
def native_engine(load):
    loaded = load("default", "bfloat16")
    engine = Engine(ServeConfig(model="default", dtype="bfloat16", cache_bytes=1 << 28), loaded=loaded)
    if not engine.executor.runner.lean.native_prefill:
        engine.close()
        pytest.skip("a prefill forward of several sequences needs our AMX kernels")
    yield engine
    engine.close()


def test_a_request_that_would_compute_an_earlier_ones_block_waits_a_step_and_matches_it(native_engine):
    engine = native_engine
    shared = " ".join(f"rule {i}: keep every answer short." for i in range(18))   # a block of 128 and a tail
    def ask(tenant: str, question: str) -> EngineRequest:
        return EngineRequest(tenant, "chat", messages=({"role": "system", "content": shared},
                                                       {"role": "user", "content": question}),
                             sampling=SamplingParams(max_tokens=TOKENS, temperature=0), keep_logits=True)
    requests = [ask("t1", "First question?"), ask("t2", "Second question?"), ask("t1", "Third question?")]
    runner = engine.executor.runner
    prefills = runner.num_prefill_forwards

    async def together():
        return await asyncio.gather(*[_events(engine, r) for r in requests])

    events = _at_once(together)
    reports = [next(e for e in evs if isinstance(e, PromptReport)) for evs in events]
    system_tokens = len(engine.executor.build_prompt(requests[0]).parts[0].token_ids)
    assert reports[0].cached_tokens == 0 and reports[1].cached_tokens == 0     # another tenant never shares
    assert engine.executor.config.block_tokens < system_tokens
    assert sum(r.prompt_tokens - r.cached_tokens for r in reports) <= engine.executor.config.prefill_span_tokens
    assert reports[2].cached_tokens == system_tokens          # matched, not computed again
    assert runner.num_prefill_forwards - prefills == 2       # t1's first with t2's, then t1's second after it
    for req, evs in zip(requests, events):                   # each gets the bits of its run alone, uncached
        alone = _lone_uncached(engine, req)
        assert evs[-1].token_ids == alone.token_ids and torch.equal(evs[-1].first_logits, alone.first_logits)
    engine.tree.check()


def _lone_uncached(engine: Engine, req: EngineRequest) -> Finished:
    other = Engine(ServeConfig(model="default", dtype="bfloat16", cache_bytes=0), loaded=engine.loaded)
    try:
        return asyncio.run(_finished(other, req))
    finally:
        other.close()


def test_a_prompt_spans_more_per_forward_only_while_no_stream_decodes(load):
    """--idle-prefill-span-tokens: with no request decoding nor waiting, a long cold prompt runs in one forward;
    while one decodes or waits, in forwards of up to --prefill-span-tokens, so it waits at most that much
    prefill. Either way its reply and first logits are those of one forward per --prefill-span-tokens span."""
    loaded = load("tiny", "bfloat16")
    config = ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=0)
    engine = Engine(config, loaded=loaded)
    try:
        if not engine.executor.runner.linears_merge(config.block_tokens):
            pytest.skip("larger spans while idle need kernels whose rows never depend on the call (AMX)")
        assert engine.executor.config.idle_prefill_span_tokens == config.idle_prefill_span_tokens
        assert f"up to {config.idle_prefill_span_tokens} tokens while no other request decodes or waits" in engine.spans.reason
        long = EngineRequest("tenant", "chat", messages=({"role": "user", "content": "note " * 1100},),
                             sampling=SamplingParams(max_tokens=4, temperature=0), keep_logits=True)
        tokens = sum(len(part.token_ids) for part in engine.executor.build_prompt(long).parts)
        assert 2 * config.prefill_span_tokens < tokens <= config.idle_prefill_span_tokens
        runner = engine.executor.runner

        before = runner.num_prefill_forwards
        idle = asyncio.run(_finished(engine, long))
        assert runner.num_prefill_forwards - before == 1

        async def beside_a_stream():
            stream_req = EngineRequest("tenant", "chat", messages=({"role": "user", "content": "Count slowly."},),
                                       sampling=SamplingParams(max_tokens=400, temperature=0))
            stream = engine.stream(stream_req)
            async for event in stream:                  # until the stream decodes
                if not isinstance(event, PromptReport):
                    break
            before = runner.num_prefill_forwards
            finished = await _finished(engine, long)
            forwards = runner.num_prefill_forwards - before
            await stream.aclose()
            return finished, forwards

        busy, forwards = asyncio.run(beside_a_stream())
        assert forwards >= 3                            # spans of at most --prefill-span-tokens

        async def with_one_waiting():                   # a request queued behind it: spans of 512 too
            return await asyncio.gather(_finished(engine, long), _finished(engine, request("And then?")))

        before = runner.num_prefill_forwards
        queued, _ = _at_once(with_one_waiting)
        assert runner.num_prefill_forwards - before >= 3
        narrow = Engine(ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=0, idle_prefill_span_tokens=0),
                        loaded=loaded)
        try:
            assert narrow.executor.config.idle_prefill_span_tokens == config.prefill_span_tokens
            reference = asyncio.run(_finished(narrow, long))
        finally:
            narrow.close()
        for finished in (idle, busy, queued):
            assert finished.token_ids == reference.token_ids
            assert torch.equal(finished.first_logits, reference.first_logits)
    finally:
        engine.close()
