"""Choosing the next token, and turning token ids into text that respects stop strings."""

from __future__ import annotations

import torch

from segcache.engine.request import SamplingParams


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> int:
        if self.params.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            probs = _nucleus(probs, self.params.top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_probs, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
    sorted_probs[outside] = 0.0
    kept = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return kept / kept.sum()


class TextStream:
    """Decodes generated ids incrementally and holds back text that might begin a stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""          # decoded so far (complete characters only)
        self.emitted = 0        # characters handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append a token; return the new text that is safe to emit now."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):   # an incomplete UTF-8 sequence: wait for the next token
            return ""
        self.text = text
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.emitted - len(stop)))
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        safe = len(self.text) if self.stopped else len(self.text) - self._held_back()
        return self._emit(max(safe, self.emitted))

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:n]):
                    longest = max(longest, n)
                    break
        return longest

    def _emit(self, upto: int) -> str:
        chunk = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return chunk
