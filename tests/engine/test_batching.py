"""The invariant under concurrency: whatever ran beside a request, its answer is its lone uncached answer.

A set of requests (segments across agents, multi-turn, a system message after segments, a boundary
merge, completions) arrives at once, in several orders and with max_batch 1..8; each request's token
ids and first-token logits must equal (torch.equal) those of the same request run alone on an engine
with --cache-bytes 0. The cached tokens reported must be the tokens prefill skipped.
"""

import asyncio
import random

import pytest
import torch

from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.invariance import BatchingRefused
from segcache.engine.request import Finished, PromptReport
from tests.engine.test_invariant import BACKEND, FRONTEND, RULES, chat, completion, seg

STEM = "The build failed because the test runner timed out while compil"


def request_set():
    user = {"role": "user", "content": "Fix the login button."}
    turns = [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."},
             {"role": "user", "content": "Another one?"}]
    return [
        chat([seg(RULES, "A"), seg(BACKEND, "B")], [{"role": "user", "content": "Add a health endpoint."}], 10),
        chat([seg(RULES, "A"), seg(FRONTEND, "C")], [user], 6),
        chat([seg(RULES, "A"), seg(BACKEND, "B")], [user], 12),
        chat([], turns, 8),
        chat([], turns[:1], 5),
        chat([seg(RULES, "A")], [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "Hello"}], 7),
        completion([seg(STEM, "S")], "ing the project.", 6),
        completion([seg(STEM, "S")], "\nNext step:", 9),
    ]


@pytest.fixture(scope="module")
def bf16(load):
    return load("default", "bfloat16")


@pytest.fixture(scope="module")
def lone_answers(bf16):
    """Each request alone on an uncached engine."""
    engine = Engine(ServeConfig(model="default", dtype="bfloat16", cache_bytes=0), loaded=bf16)
    try:
        return [engine.run(r)[-1] for r in request_set()]
    finally:
        engine.close()


async def _collect(engine: Engine, request) -> list:
    return [event async for event in engine.stream(request)]


def run_concurrently(engine: Engine, requests: list) -> list[list]:
    """Submit all at once, in list order (tasks start, and enqueue, in creation order)."""
    async def main():
        return await asyncio.gather(*[_collect(engine, r) for r in requests])
    return asyncio.run(main())


def assert_same_answers(engine: Engine, requests: list, order: list[int], lone: list[Finished]) -> None:
    runner = engine.executor.runner
    before = runner.num_prefill_tokens
    results = run_concurrently(engine, [requests[i] for i in order])
    skipped = 0
    for index, events in zip(order, results):
        report, finished = events[0], events[-1]
        assert isinstance(report, PromptReport) and isinstance(finished, Finished)
        assert finished.token_ids == lone[index].token_ids, f"request {index} answered differently"
        assert torch.equal(finished.first_logits, lone[index].first_logits), f"request {index}: first logits differ"
        skipped += report.cached_tokens
        assert report.prompt_tokens >= report.cached_tokens
    computed = sum(events[0].prompt_tokens for events in results) - skipped
    assert runner.num_prefill_tokens - before == computed, "reported cached tokens must be the tokens prefill skipped"
    engine.tree.check()


@pytest.mark.parametrize("max_batch", [1, 2, 5, 8])
def test_concurrent_requests_answer_as_they_would_alone_uncached(bf16, lone_answers, max_batch):
    engine = Engine(ServeConfig(model="default", dtype="bfloat16", cache_bytes=1 << 30, max_batch=max_batch),
                    loaded=bf16)
    try:
        assert engine.batching.batched == (max_batch > 1)
        requests = request_set()
        shuffle = random.Random(max_batch)
        for _ in range(2):   # a cold cache, then one the first round filled
            order = list(range(len(requests)))
            shuffle.shuffle(order)
            assert_same_answers(engine, requests, order, lone_answers)
        runner = engine.executor.runner
        if max_batch > 1:
            assert runner.num_decode_forwards < runner.num_decode_tokens, "decode steps were never batched"
    finally:
        engine.close()


def test_batching_auto_falls_back_in_float32_and_stays_bit_identical(load):
    loaded = load("default", "float32")
    engine = Engine(ServeConfig(model="default", dtype="float32", cache_bytes=1 << 30, max_batch=4), loaded=loaded)
    uncached = Engine(ServeConfig(model="default", dtype="float32", cache_bytes=0, batching="off"), loaded=loaded)
    try:
        assert not engine.batching.batched and "float32" in engine.batching.reason
        requests = request_set()[:4]
        lone = [uncached.run(r)[-1] for r in requests]
        assert_same_answers(engine, requests, [2, 0, 3, 1], lone)
        runner = engine.executor.runner
        assert runner.num_decode_forwards == runner.num_decode_tokens
    finally:
        engine.close()
        uncached.close()


def test_start_up_verdict_both_ways(load):
    with pytest.raises(BatchingRefused, match="float32"):
        Engine(ServeConfig(model="default", dtype="float32", batching="on"), loaded=load("default", "float32"))
    engine = Engine(ServeConfig(model="default", dtype="bfloat16", batching="on"), loaded=load("default", "bfloat16"))
    try:
        assert engine.batching.batched and "verified" in engine.batching.reason
    finally:
        engine.close()
    off = Engine(ServeConfig(model="default", dtype="bfloat16", batching="off"), loaded=load("default", "bfloat16"))
    try:
        assert not off.batching.batched
    finally:
        off.close()
