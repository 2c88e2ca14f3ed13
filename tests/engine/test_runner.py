"""The runner's two forwards: the lean one agrees with the library's, and both are cache-invariant."""

import pytest
import torch

from segcache.engine.prompt import SegmentText, build_chat_prompt
from segcache.engine.runner import Runner


def parts_of(loaded):
    prompt = build_chat_prompt(loaded.tokenizer, [SegmentText("Rules: answer briefly.", "A")],
                               [{"role": "user", "content": "What is a cache?"}])
    return [p.token_ids for p in prompt.parts]


def prefill(runner, parts, cached_upto=0):
    """Prefill all parts; the first `cached_upto` come from a separate run's stored KV."""
    capacity = sum(len(p) for p in parts) + 5   # room for the five decode steps of the first test
    stored = []
    if cached_upto:
        warm = runner.start([], capacity)
        stored = [runner.prefill_part(warm, p) for p in parts[:cached_upto]]
    state = runner.start(stored, capacity)
    for part in parts[cached_upto:]:
        runner.prefill_part(state, part)
    return state


def test_lean_forward_matches_the_library_forward(load):
    loaded = load("default", "float32")
    parts = parts_of(loaded)
    lean, library = Runner(loaded), Runner(loaded, lean=False)
    assert lean.lean is not None and library.lean is None
    a, b = prefill(lean, parts), prefill(library, parts)
    assert torch.allclose(a.last_logits, b.last_logits, atol=1e-3)
    for _ in range(5):
        token = int(torch.argmax(a.last_logits))
        assert token == int(torch.argmax(b.last_logits))
        lean.decode_step(a, token)
        library.decode_step(b, token)


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "library"])
def test_both_forwards_are_bit_identical_with_and_without_cache(load, lean):
    loaded = load("tiny", "bfloat16")
    runner = Runner(loaded, lean=lean)
    parts = parts_of(loaded)
    uncached = prefill(runner, parts)
    for upto in range(1, len(parts)):
        assert torch.equal(prefill(runner, parts, upto).last_logits, uncached.last_logits)


def test_prefill_counts_only_the_tokens_it_runs(load):
    loaded = load("tiny", "float32")
    runner = Runner(loaded)
    parts = parts_of(loaded)
    before = runner.num_prefill_tokens
    prefill(runner, parts, cached_upto=2)
    # the warm-up run computed the first two parts, the second run only the rest
    assert runner.num_prefill_tokens - before == sum(len(p) for p in parts)


def test_forwards_run_on_the_thread_that_built_the_runner(load):
    """One OpenMP team per process: a runner used from a second thread would make every forward slower."""
    import threading

    from segcache.config import ServeConfig
    from segcache.engine.engine import Engine

    runner = Runner(load("tiny", "bfloat16"))
    errors = []
    other = threading.Thread(target=lambda: errors.append(_error_of(lambda: runner.start([], 8))))
    other.start()
    other.join()
    assert isinstance(errors[0], RuntimeError) and "thread that built it" in str(errors[0])
    runner.start([], 8)                                    # fine on its own thread
    engine = Engine(ServeConfig(model="tiny", dtype="bfloat16", cache_bytes=0), loaded=load("tiny", "bfloat16"))
    try:
        assert engine.executor.runner._owner == engine._worker.ident   # the engine builds it on its worker
    finally:
        engine.close()


def _error_of(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None
