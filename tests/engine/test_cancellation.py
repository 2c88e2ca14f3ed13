"""A client that goes away stops costing anything within one engine step, streaming or not."""

import asyncio
import pytest

from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.request import EngineRequest, Finished, SamplingParams, TextDelta

LONG = 300   # the tiny random model never picks EOS greedily, so an uncancelled request runs this long


def long_request(max_tokens: int = LONG) -> EngineRequest:
    return EngineRequest("tenant", "chat", messages=({"role": "user", "content": "Tell me a long story."},),
                         sampling=SamplingParams(max_tokens=max_tokens, temperature=0))


@pytest.fixture(scope="module")
def engine(load):
    engine = Engine(ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=0), loaded=load("tiny", "bfloat16"))
    yield engine
    engine.close()


def decoded(engine: Engine) -> int:
    return engine.executor.runner.num_decode_tokens


async def wait_idle(engine: Engine) -> None:
    while engine.scheduler.has_work or not engine._jobs.empty():
        await asyncio.sleep(0.01)


async def wait_decoding(engine: Engine, start: int) -> None:
    while decoded(engine) < start + 5:
        await asyncio.sleep(0.001)


def test_an_uncancelled_request_runs_to_its_limit(engine):
    assert engine.run(long_request())[-1].completion_tokens == LONG


def test_a_non_streaming_client_that_disconnects_stops_decoding_within_one_step(engine):
    async def main():
        start = decoded(engine)
        task = asyncio.ensure_future(_consume(engine.stream(long_request())))   # a route awaiting the whole reply
        await wait_decoding(engine, start)
        task.cancel()                                  # what the server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = decoded(engine)
        await wait_idle(engine)
        return decoded(engine) - at_cancel, decoded(engine) - start

    after_cancel, total = asyncio.run(main())
    assert after_cancel <= 1, f"{after_cancel} tokens decoded after the client went away"
    assert total < LONG // 2


def test_a_closed_stream_stops_decoding_within_one_step(engine):
    async def main():
        start = decoded(engine)
        events = engine.stream(long_request())
        async for event in events:
            if isinstance(event, TextDelta) and decoded(engine) >= start + 5:
                break
        await events.aclose()
        at_close = decoded(engine)
        await wait_idle(engine)
        return decoded(engine) - at_close, decoded(engine) - start

    after_close, total = asyncio.run(main())
    assert after_close <= 1, f"{after_close} tokens decoded after the stream closed"
    assert total < LONG // 2


def test_others_keep_decoding_when_one_client_leaves(engine):
    async def main():
        kept = asyncio.ensure_future(_consume(engine.stream(long_request(40))))
        gone = asyncio.ensure_future(_consume(engine.stream(long_request())))
        await wait_decoding(engine, decoded(engine))
        gone.cancel()
        return await kept

    events = asyncio.run(main())
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 40


async def _consume(stream) -> list:
    return [event async for event in stream]


def test_a_client_whose_event_loop_closes_mid_request_cancels_it_and_the_engine_serves_on(engine):
    """The engine posts a request's events to its client's event loop. When that loop is gone (a script's
    asyncio.run returned with the request still running), the request ends within a step and the engine
    thread, which serves every client, keeps serving."""
    async def leave_after_the_first_tokens():
        stream = engine.stream(long_request())
        start = decoded(engine)
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        await wait_decoding(engine, start)
        return decoded(engine)

    at_leaving = asyncio.run(leave_after_the_first_tokens())     # the loop closes with the request running

    async def later():
        await wait_idle(engine)
        return [event async for event in engine.stream(long_request(4))]

    events = asyncio.run(asyncio.wait_for(later(), 60))
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 4
    assert decoded(engine) - at_leaving < LONG / 2                 # the first request stopped early
