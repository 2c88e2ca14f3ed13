"""Reading each server's own account of a request: prompt tokens, reused tokens, completion tokens.

segcache reports reuse in `usage` (the final streamed chunk). llama-cpp-python's server reports no
cached-token count in its responses; with its default verbose logging it prints, per request,

    Llama.generate: 1496 prefix-match hit, remaining 112 prompt tokens to eval
    llama_perf_context_print: prompt eval time =  310.12 ms /   112 tokens (...)
    llama_perf_context_print:        eval time =  402.55 ms /    31 runs   (...)

so the harness reads those lines from its log. A figure no server states is marked as estimated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCES = ("usage", "server log", "estimated")

_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
_EVAL_RUNS = re.compile(r"(?<!prompt )eval time =\s*[\d.]+ ms /\s*(\d+) runs")
_FULLY_CACHED = "Llama.generate: full prompt already cached"
_STATE_SAVED = re.compile(r"Llama\.save_state: saving (\d+) bytes of llama state")


@dataclass(frozen=True)
class PromptUsage:
    prompt_tokens: int
    reused_tokens: int
    completion_tokens: int | None  # None when the server did not say
    source: str                    # where reused_tokens comes from: one of SOURCES

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens


def from_segcache_usage(usage: dict) -> PromptUsage:
    """segcache's usage object: cached_prefix_tokens, with OpenAI's cached_tokens as a cross-check."""
    reused = usage["cached_prefix_tokens"]
    openai_cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", reused)
    if openai_cached != reused:
        raise ValueError(f"usage disagrees with itself: cached_prefix_tokens={reused}, "
                         f"prompt_tokens_details.cached_tokens={openai_cached}")
    return PromptUsage(prompt_tokens=usage.get("input_tokens", usage["prompt_tokens"]), reused_tokens=reused,
                       completion_tokens=usage.get("output_tokens", usage.get("completion_tokens")),
                       source="usage")


def from_openai_usage(usage: dict) -> PromptUsage:
    """Any OpenAI-style usage: prompt_tokens_details.cached_tokens when given, else nothing reused."""
    details = usage.get("prompt_tokens_details") or {}
    return PromptUsage(prompt_tokens=usage["prompt_tokens"], reused_tokens=details.get("cached_tokens") or 0,
                       completion_tokens=usage.get("completion_tokens"),
                       source="usage" if "cached_tokens" in details else "estimated")


def from_llamacpp_log(log_text: str, prompt_tokens: int | None = None) -> PromptUsage | None:
    """The lines llama-cpp-python printed while serving one request; None if it printed no timings.

    prompt_tokens (the harness's own count) is needed only when llama.cpp skipped the prompt
    entirely ("full prompt already cached"), the one case where its log gives no count.
    """
    evals = _PROMPT_EVAL.findall(log_text)
    if not evals:
        return None
    runs = _EVAL_RUNS.findall(log_text)
    completion = int(runs[-1]) + 1 if runs else None  # the first token comes out of the prompt eval
    hit = _PREFIX_HIT.findall(log_text)
    if hit:
        reused, computed = (int(n) for n in hit[-1])
    elif _FULLY_CACHED in log_text and prompt_tokens is not None:
        reused, computed = prompt_tokens, 0
    else:
        reused, computed = 0, int(evals[-1])
    return PromptUsage(prompt_tokens=reused + computed, reused_tokens=reused, completion_tokens=completion,
                       source="server log")


def llamacpp_cached_bytes(log_text: str) -> int:
    """Bytes of the states llama-cpp-python's RAM cache saved: one full context snapshot per request.

    Its cache evicts only past its capacity (2 GiB by default), which this workload stays below.
    """
    return sum(int(n) for n in _STATE_SAVED.findall(log_text))


def llamacpp_saved_states(log_text: str) -> int:
    return len(_STATE_SAVED.findall(log_text))
