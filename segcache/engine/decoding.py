"""One request's side of decoding: choose each token from its logits, stream text, decide when to stop.

The model runner produces logits; a `Decoder` turns them into tokens and events. It holds no model
and no cache, so the same object serves a loop that decodes one request at a time and a scheduler
that batches many requests into one forward (each sequence's logits row goes to its own Decoder).

    decoder = Decoder(request.sampling, tokenizer, eos_ids, limit, keep_logits)
    while not decoder.done:
        events = decoder.step(logits)      # TextDelta events to emit now
        if not decoder.done: logits = forward(decoder.last_token)
    finished = decoder.finish()
"""

from __future__ import annotations

import time
from collections.abc import Collection

import torch

from segcache.engine.request import Finished, SamplingParams, TextDelta
from segcache.engine.sampling import Sampler, TextStream


class Decoder:
    def __init__(self, params: SamplingParams, tokenizer, eos_token_ids: Collection[int], limit: int,
                 keep_logits: bool = False):
        """`limit`: most tokens to generate (max_tokens, already capped by the room left in the context)."""
        self.params, self.eos_token_ids, self.limit = params, eos_token_ids, limit
        self.sampler, self.stream = Sampler(params), TextStream(tokenizer, params.stop)
        self.keep_logits = keep_logits
        self.first_logits: torch.Tensor | None = None
        self.generated: list[int] = []
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
        token = self.sampler(logits)
        self.generated.append(token)
        if token in self.eos_token_ids:
            self.finish_reason = "stop"
            return []
        delta = self.stream.add(token)
        if self.stream.stopped:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.limit:
            self.finish_reason = "length"
        return [TextDelta(delta)] if delta else []

    def cancel(self) -> None:
        """The client went away: stop after the current token."""
        if self.finish_reason is None:
            self.finish_reason = "length"

    def finish(self) -> tuple[list[TextDelta], Finished]:
        """The held-back tail (if any) and the final event."""
        tail = self.stream.flush()
        finished = Finished(finish_reason=self.finish_reason or "length", completion_tokens=len(self.generated),
                            text=self.stream.text, decode_s=time.perf_counter() - self.started,
                            first_logits=self.first_logits, token_ids=tuple(self.generated))
        return ([TextDelta(tail)] if tail else []), finished
