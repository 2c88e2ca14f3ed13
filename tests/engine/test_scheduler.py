"""Admission and queueing, without a model: FIFO, max_batch, the running KV budget, one prefill at a time."""

from segcache.engine.prompt import Prompt
from segcache.engine.request import EngineRequest
from segcache.engine.scheduler import Scheduler
from segcache.engine.sequence import Sequence


def sequence(tenant: str, kv_bytes: int = 100) -> Sequence:
    return Sequence(EngineRequest(tenant, "chat"), Prompt([]), lambda event: None, kv_bytes, 0.0)


def test_one_sequence_prefills_at_a_time_in_arrival_order():
    scheduler = Scheduler(max_batch=4, max_running_kv_bytes=10_000)
    first, second = sequence("a"), sequence("b")
    scheduler.add(first)
    scheduler.add(second)
    assert scheduler.schedule().prefill is first
    assert scheduler.schedule().prefill is first          # still prefilling: second waits
    scheduler.start_decoding(first)
    step = scheduler.schedule()
    assert (step.prefill, step.decode) == (second, [first])


def test_max_batch_and_kv_budget_hold_back_the_queue():
    scheduler = Scheduler(max_batch=2, max_running_kv_bytes=250)
    running = [sequence("a"), sequence("a")]
    for s in running:
        scheduler.add(s)
        scheduler.schedule()
        scheduler.start_decoding(s)
    late = sequence("b")
    scheduler.add(late)
    assert scheduler.schedule().prefill is None           # max_batch reached
    scheduler.remove(running[0])
    assert scheduler.schedule().prefill is late           # 100 + 100 <= 250
    scheduler.start_decoding(late)
    scheduler.remove(running[1])
    big = sequence("c", kv_bytes=200)
    scheduler.add(big)
    assert scheduler.schedule().prefill is None           # 100 + 200 > 250
    scheduler.remove(late)
    assert scheduler.schedule().prefill is big            # alone it always runs


def test_snapshot_reports_depth_and_first_position_per_tenant():
    scheduler = Scheduler(max_batch=1, max_running_kv_bytes=10_000)
    for tenant in ("a", "b", "a", "c"):
        scheduler.add(sequence(tenant))
    scheduler.schedule()                                   # the first "a" runs
    snapshot = scheduler.snapshot()
    assert snapshot.waiting == {"b": 1, "a": 1, "c": 1}
    assert snapshot.first_position == {"b": 0, "a": 1, "c": 2}
    assert (snapshot.running, snapshot.running_kv_bytes, snapshot.depth) == (1, 100, 3)


def test_cancelled_sequences_are_found_wherever_they_are():
    scheduler = Scheduler(max_batch=2, max_running_kv_bytes=10_000)
    running, waiting = sequence("a"), sequence("b")
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.schedule()
    running.cancelled.set()
    waiting.cancelled.set()
    assert scheduler.cancelled() == [waiting, running]
    for s in scheduler.cancelled():
        scheduler.remove(s)
    assert not scheduler.has_work


def test_the_admission_cost_counts_the_packs_of_a_reply_and_of_an_uncached_prompt(load):
    """Where decode keeps a packed copy of each whole key block of a buffer (Runner.packs_buffers), a request's
    admission cost is its KV buffer plus those copies: of the reply's tokens (a prompt's blocks go to the tree),
    or of every token with the cache off."""
    from segcache.config import ServeConfig
    from segcache.engine.engine import Engine
    from segcache.engine.request import EngineRequest, SamplingParams

    loaded = load("default", "bfloat16", "int4")
    request = EngineRequest("t", "chat", messages=({"role": "user", "content": "Hi there"},), sampling=SamplingParams(max_tokens=20))
    costs = {}
    for cache_bytes in (1 << 26, 0):
        engine = Engine(ServeConfig(model="default", cache_bytes=cache_bytes), loaded=loaded)
        try:
            executor = engine.executor
            prompt = executor.build_prompt(request)
            prompt_tokens = sum(len(p.token_ids) for p in prompt.parts)
            per_token = executor.bytes_per_token
            costs[cache_bytes] = executor.kv_bytes(request, prompt)
            packs = executor.runner.packs_buffers
        finally:
            engine.close()
    buffer = per_token * (prompt_tokens + 20)
    assert costs[1 << 26] == buffer + (per_token * 20 if packs else 0)
    assert costs[0] == buffer * (2 if packs else 1)
