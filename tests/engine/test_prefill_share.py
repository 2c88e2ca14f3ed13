"""A step's prefill share: when a prompt finishes with room left in the step's span, the next waiting
request starts in the same step, so short turns that arrive together do not each wait a decode step."""

import asyncio
import sys

import pytest

from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.request import EngineRequest, Finished, SamplingParams

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

    forwards = runner.num_decode_forwards
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)     # the four jobs reach the engine's queue before its worker looks again
    try:
        finished = asyncio.run(together())
    finally:
        sys.setswitchinterval(interval)
    assert all(f.completion_tokens == TOKENS for f in finished)
    # each first token comes from its prefill's logits, then one decode forward per token for all four at
    # once; one request prefilled per step would take 3 forwards more, its stragglers decoding alone
    assert runner.num_decode_forwards - forwards == TOKENS - 1
    engine.tree.check()
