"""The floor for warm requests: prefilling only their new tokens, in the engine, with no server.

A tree cache cannot answer a warm request faster than the engine computes the tokens the cache did
not have; the gap between segcache's warm TTFT and this floor is what HTTP, prompt assembly, the
cache lookup and the first sampling step cost.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics

from segcache.bench.report import Floor
from segcache.bench.runner import SystemResult

FLOOR_MODULE = "segcache.engine.floor"


def measure_floor(result: SystemResult, model: str, dtype: str) -> Floor:
    """Median warm TTFT of segcache's requests after the first, and the median floor of the same ones.

    The floor stays None where the engine offers no floor measurement.
    """
    warm = [r for r in result.requests[1:] if r.usage.reused_tokens > 0 and r.usage.computed_tokens > 0]
    warm_ttft_s = statistics.median(r.ttft_s for r in warm) if warm else None
    if not warm or importlib.util.find_spec(FLOOR_MODULE) is None:
        return Floor(warm_ttft_s=warm_ttft_s, floor_s=None)
    prefill_floor_seconds = importlib.import_module(FLOOR_MODULE).prefill_floor_seconds
    floors = []
    for request in warm:
        split = request.usage.reused_tokens
        floors.append(prefill_floor_seconds(model, dtype, list(request.prompt_ids[:split]),
                                            new_parts(request.prompt_ids, request.part_ends, split)))
    return Floor(warm_ttft_s=warm_ttft_s, floor_s=statistics.median(floors))


def new_parts(prompt_ids: tuple[int, ...], part_ends: tuple[int, ...], reused: int) -> list[list[int]]:
    """The tokens after `reused`, cut where the prompt's parts end: one forward each, as the server runs them.

        parts:   |--- A ---|--- B ---|-- D --|user|gen|
        reused:  |=================|                      (may end inside a part)
        new:                       |B'|-- D --|user|gen|
    """
    cuts = [reused] + [end for end in part_ends if end > reused]
    return [list(prompt_ids[start:end]) for start, end in zip(cuts, cuts[1:]) if end > start]
