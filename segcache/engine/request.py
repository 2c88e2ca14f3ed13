"""What the engine is asked to do and what it answers: plain dataclasses, no HTTP, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from segcache.engine.grammar import Grammar
from segcache.engine.prompt import SegmentText


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float = 0.0     # subtracted once per earlier occurrence of a token in the reply
    presence_penalty: float = 0.0      # subtracted once if a token occurred in the reply
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, added to its logit)
    logprobs: bool = False             # report each chosen token's log-probability
    top_logprobs: int = 0              # and this many most likely alternatives


@dataclass(frozen=True)
class SegmentInput:
    text: SegmentText
    ttl_seconds: float | None = None


@dataclass(frozen=True)
class EngineRequest:
    tenant: str
    kind: str                                  # chat | completion | warm
    segments: tuple[SegmentInput, ...] = ()
    messages: tuple[dict, ...] = ()
    prompt: str | None = None                  # completion only
    sampling: SamplingParams = SamplingParams(max_tokens=16)
    reject_split: bool = False                 # segment_boundary == "reject"
    pin: bool = False                          # warm only
    unpin: bool = False                        # warm only: `pin: false` sent explicitly releases the chain
    keep_logits: bool = False                  # return the first-token logits (tests, audits)
    ttl_seconds: float | None = None           # lifetime of the parts without a segment ttl (head, messages);
                                               # None: --default-ttl (prompt_cache_retention, cache_control)
    grammar: Grammar | None = None             # constrain the reply (JSON schema, tool calls)


@dataclass(frozen=True)
class Receipt:
    id: str | None
    hash: str | None
    tokens: int
    cached_tokens: int
    status: str                                # hit | partial | computed
    reason: str | None                         # None on a hit; new | evicted | expired | boundary | prefix_miss
    tier: str | None = None                    # on a hit, where the KV came from: ram | disk; None when computed


@dataclass(frozen=True)
class PromptReport:
    """Sent once the prompt is prefilled: everything about the input side."""
    prompt_tokens: int
    cached_tokens: int                         # tokens whose KV came from the cache (never run in prefill)
    receipts: tuple[Receipt, ...]
    parts: tuple[dict, ...]                    # kind, role, id, hash, text, tokens, cached_tokens (trace log)
    chain_hash: str | None                     # key of the last cached node: the warm endpoint's root_hash
    expires_at: float | None                   # earliest expiry (unix time) along the cached chain
    prefill_s: float
    queue_s: float
    tier_hits: tuple[tuple[str, int, int], ...] = ()   # (tier, tokens, KV bytes) read from each tier


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()    # the most likely tokens at this step, best first


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()    # of the tokens chosen since the previous delta


@dataclass(frozen=True)
class Finished:
    finish_reason: str                         # stop | length
    completion_tokens: int
    text: str
    decode_s: float
    first_logits: object | None = None         # a torch tensor when keep_logits
    token_ids: tuple[int, ...] = field(default=())
    logprobs: tuple[TokenLogprob, ...] = ()    # one per reported token, when asked for


Event = PromptReport | TextDelta | Finished
