"""The floor for a warm request: the time to prefill only its new tokens against an already computed
context, measured in the engine directly (no HTTP, no prompt assembly, no cache lookup)."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence


from segcache.engine.model import LoadedModel, load_model
from segcache.engine.runner import Runner


def prefill_floor_seconds(model: str, dtype: str, context_ids: Sequence[int], new_ids: Sequence,
                          repeats: int = 3, loaded: LoadedModel | None = None) -> float:
    """Median seconds to prefill `new_ids` after `context_ids`.

    `new_ids` is a flat list of token ids (one forward) or a list of parts (one forward per part,
    as the server runs them).
    """
    runner = Runner(loaded or _load(model, dtype))
    parts = [tuple(p) for p in new_ids] if new_ids and isinstance(new_ids[0], (list, tuple)) else [tuple(new_ids)]
    capacity = len(context_ids) + sum(len(p) for p in parts)
    state = runner.start([], capacity)
    context_kv = runner.prefill_part(state, tuple(context_ids)) if context_ids else None
    timings = []
    for _ in range(max(1, repeats)):
        state = runner.start([context_kv] if context_kv is not None else [], capacity)
        started = time.perf_counter()
        for part in parts:
            runner.prefill_part(state, part)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


@functools.lru_cache(maxsize=2)
def _load(model: str, dtype: str) -> LoadedModel:
    return load_model(model, dtype)
