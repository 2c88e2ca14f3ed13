"""Constrained decoding with llguidance: a grammar becomes a mask on each logits row.

llguidance was chosen over xgrammar on this CPU: both compute a mask in well under a millisecond
per token (a decode step of the default model takes ~30 ms), but xgrammar's wheel requires triton
(hundreds of megabytes, GPU-only use here) while llguidance has no dependencies.
"""

from __future__ import annotations

import numpy as np
import torch

from segcache.engine.grammar import Grammar
from segcache.engine.prompt import PromptError


class GrammarCompiler:
    """Compiles grammars for one tokenizer; the tokenizer's index (~1.5 s to build) is made once, on first use."""

    def __init__(self, tokenizer, eos_token_ids: tuple[int, ...], vocab_size: int):
        self.tokenizer, self.eos_token_ids, self.vocab_size = tokenizer, eos_token_ids, vocab_size
        self._indexed = None

    def compile(self, grammar: Grammar) -> "Constraint":
        from llguidance import LLMatcher

        matcher = LLMatcher(self._index(), grammar.lark, log_level=0)
        if matcher.is_error():
            raise PromptError(f"{grammar.param} cannot be enforced: {matcher.get_error().strip()}",
                              "invalid_schema", param=grammar.param)
        return Constraint(matcher, self.vocab_size)

    def _index(self):
        if self._indexed is None:
            import llguidance
            import llguidance.hf

            self._indexed = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                         eos_token=list(self.eos_token_ids),
                                                         slices=llguidance.LLTokenizer.json_slices())
        return self._indexed


class Constraint:
    """One reply's position in its grammar."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)   # bit i: token i allowed

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but end-of-text may follow."""
        return self.matcher.is_stopped()

    def mask_(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place. logits: (vocab,)"""
        self.matcher.unsafe_compute_mask_ptr(self.bitmask.ctypes.data, self.bitmask.nbytes)
        allowed = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")
        forbidden = np.ones(logits.shape[-1], dtype=bool)
        upto = min(len(allowed), logits.shape[-1])
        forbidden[:upto] = allowed[:upto] == 0
        logits.masked_fill_(torch.from_numpy(forbidden), float("-inf"))

    def advance(self, token_id: int) -> None:
        if not self.matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar refused token {token_id}: {self.matcher.get_error()}")
