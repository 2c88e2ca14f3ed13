"""One request's side of decoding: choose each token from its logits, stream text, decide when to stop.

The model runner produces logits; a `Decoder` turns them into tokens and events. It holds no model
and no cache, so the same object serves a loop that decodes one request at a time and a scheduler
that batches many requests into one forward (each sequence's logits row goes to its own Decoder).

    decoder = Decoder(request.sampling, tokenizer, eos_ids, limit, keep_logits, constraint)
    while not decoder.done:
        events = decoder.step(logits)      # TextDelta events to emit now
        if not decoder.done: logits = forward(decoder.last_token)
    finished = decoder.finish()

Per step, on the row given:  logits --penalties, logit_bias--> --grammar mask--> sampler -> token
Log-probabilities are read from the row as the model produced it.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import torch

from segcache.engine.constraint import Constraint
from segcache.engine.logits import Adjuster, token_logprob
from segcache.engine.request import Finished, SamplingParams, TextDelta, TokenLogprob
from segcache.engine.sampling import Sampler, TextStream


class Decoder:
    def __init__(self, params: SamplingParams, tokenizer, eos_token_ids: Collection[int], limit: int,
                 keep_logits: bool = False, constraint: Constraint | None = None):
        """`limit`: most tokens to generate (max_tokens, already capped by the room left in the context).
        `constraint`: a compiled grammar the reply must follow (response_format, forced tool calls)."""
        self.params, self.tokenizer, self.eos_token_ids, self.limit = params, tokenizer, eos_token_ids, limit
        self.sampler, self.stream = Sampler(params), TextStream(tokenizer, params.stop)
        self.adjuster, self.constraint = Adjuster(params), constraint
        self.keep_logits = keep_logits
        self.first_logits: torch.Tensor | None = None
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.reported = 0                     # logprobs already attached to a delta
        self.finish_reason: str | None = None if limit > 0 else "length"
        self.started = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def step(self, logits: torch.Tensor) -> list[TextDelta]:
        """Choose the next token from `logits` (vocab,); return the text safe to emit now."""
        if self.keep_logits and self.first_logits is None:
            self.first_logits = logits.clone()
        token = self.sampler(self._scores(logits))
        self.generated.append(token)
        if token in self.eos_token_ids:
            self.finish_reason = "stop"
            return []
        self._observe(logits, token)
        delta = self.stream.add(token)
        if self.stream.stopped or (self.constraint is not None and self.constraint.done):
            self.finish_reason = "stop"
        elif len(self.generated) >= self.limit:
            self.finish_reason = "length"
        return [self._delta(delta)] if delta else []

    def cancel(self) -> None:
        """The client went away: stop after the current token."""
        if self.finish_reason is None:
            self.finish_reason = "length"

    def finish(self) -> tuple[list[TextDelta], Finished]:
        """The held-back tail (if any) and the final event."""
        tail = self.stream.flush()
        tail_events = [self._delta(tail)] if tail or self.reported < len(self.logprobs) else []
        finished = Finished(finish_reason=self.finish_reason or "length", completion_tokens=len(self.generated),
                            text=self.stream.text, decode_s=time.perf_counter() - self.started,
                            first_logits=self.first_logits, token_ids=tuple(self.generated),
                            logprobs=tuple(self.logprobs))
        return tail_events, finished

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The row the sampler sees; the caller's row is never written."""
        if not self.adjuster.active and self.constraint is None:
            return logits
        scores = self.adjuster(logits)
        if self.constraint is not None:
            self.constraint.mask_(scores)
        return scores

    def _observe(self, logits: torch.Tensor, token: int) -> None:
        self.adjuster.observe(token)
        if self.constraint is not None:
            self.constraint.advance(token)
        if self.params.logprobs:
            self.logprobs.append(token_logprob(logits, token, self.params.top_logprobs, self.tokenizer))

    def _delta(self, text: str) -> TextDelta:
        pending = tuple(self.logprobs[self.reported:])
        self.reported = len(self.logprobs)
        return TextDelta(text, pending)
