"""What the sampling surface does to one logits row: penalties and bias, and the log-probabilities reported.

All of it reads the row the model produced for this step and the reply so far, nothing else, so a
reply is the same whatever the cache held (the invariant tests check it).
"""

from __future__ import annotations

from collections import Counter

import torch

from segcache.engine.request import SamplingParams, TokenLogprob


class Adjuster:
    """frequency_penalty, presence_penalty and logit_bias, as OpenAI defines them (on the reply's tokens)."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.counts: Counter[int] = Counter()
        self.active = bool(params.frequency_penalty or params.presence_penalty or params.logit_bias)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """A new row (float32) with the adjustments applied. logits: (vocab,)"""
        scores = logits.to(torch.float32, copy=True)
        for token_id, bias in self.params.logit_bias:
            if token_id < scores.shape[0]:
                scores[token_id] += bias
        if self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            counts = torch.tensor(list(self.counts.values()), dtype=torch.float32)
            scores[ids] -= self.params.frequency_penalty * counts + self.params.presence_penalty
        return scores

    def observe(self, token_id: int) -> None:
        self.counts[token_id] += 1


def token_logprob(logits: torch.Tensor, token_id: int, num_top: int, tokenizer) -> TokenLogprob:
    """The model's own log-probability of `token_id` (before penalties, bias and grammar), and the top few."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)       # (vocab,)
    top = ()
    if num_top:
        values, ids = torch.topk(logprobs, num_top)
        top = tuple((token_text(tokenizer, int(i)), float(v)) for v, i in zip(values, ids))
    return TokenLogprob(token_text(tokenizer, token_id), float(logprobs[token_id]), top)


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)
