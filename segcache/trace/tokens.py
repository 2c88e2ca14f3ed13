"""Tokenizers for analysis, and a trace turned into token ids with each token owned by one part.

Two tokenizers share one small interface, `encode_batch(texts) -> list[Encoded]`:
- the served model's (`load_tokenizer("default")`: its tokenizer.json, else transformers), for real figures;
- WordTokenizer: words and ChatML markers, no model needed; exact, easy counts for tests and quick looks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from segcache.trace.records import Trace, TraceRequest

WORDS = "words"
_BATCH_SIZE = 64


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # (n,) int64 token ids
    starts: np.ndarray  # (n,) int64 character where each token starts
    ends: np.ndarray  # (n,) int64 character where each token ends (exclusive)


class Tokenizer(Protocol):
    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]: ...


class WordTokenizer:
    """One token per ChatML marker and per run of non-space characters; ids handed out on first sight."""

    _PATTERN = re.compile(r"<\|[a-z_]+\|>|(?:(?!<\|[a-z_]+\|>)\S)+")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        return [self._encode(text) for text in texts]

    def _encode(self, text: str) -> Encoded:
        matches = list(self._PATTERN.finditer(text))
        ids = [self.vocab.setdefault(m.group(), len(self.vocab)) for m in matches]
        return Encoded(np.array(ids, dtype=np.int64), np.array([m.start() for m in matches], dtype=np.int64),
                       np.array([m.end() for m in matches], dtype=np.int64))


class HFTokenizer:
    """A transformers tokenizer (any kind, e.g. one read from a GGUF file), called in batches."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        out: list[Encoded] = []
        for first in range(0, len(texts), _BATCH_SIZE):
            batch = self.tokenizer(list(texts[first: first + _BATCH_SIZE]), add_special_tokens=False,
                                   return_offsets_mapping=True)
            for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"]):
                out.append(_encoded(ids, offsets))
        return out


class RustTokenizer:
    """A tokenizer.json read by the `tokenizers` library: the same ids as transformers, loaded in a
    fraction of a second and encoded in parallel."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as Backend

        self.backend = Backend.from_file(str(path))

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        return [_encoded(e.ids, e.offsets) for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]


def load_tokenizer(spec: str = "default") -> Tokenizer:
    """'words', 'default' or 'tiny' (the served model's tokenizer), a tokenizer or model folder, or a .gguf file."""
    if spec == WORDS:
        return WordTokenizer()
    folder = _tokenizer_folder(spec)
    if folder is not None and (folder / "tokenizer.json").exists():
        return RustTokenizer(folder / "tokenizer.json")
    return HFTokenizer(load_transformers_tokenizer(spec))


def load_transformers_tokenizer(spec: str = "default"):
    """The served model's tokenizer with its chat template (what the server renders prompts with)."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").exists():  # a tokenizer-only folder
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from segcache.engine.model import load_tokenizer as load_model_tokenizer

    return load_model_tokenizer(spec)


def _tokenizer_folder(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from segcache.engine.model import resolve_model

    resolved = resolve_model(spec)
    return resolved if resolved.is_dir() else None


def _encoded(ids: Sequence[int], offsets: Sequence[tuple[int, int]]) -> Encoded:
    spans = np.array(offsets, dtype=np.int64).reshape(-1, 2)  # (n, 2)
    return Encoded(np.array(ids, dtype=np.int64), spans[:, 0], spans[:, 1])


@dataclass(frozen=True)
class TokenizedRequest:
    input_ids: np.ndarray  # (n_in,) int64
    output_ids: np.ndarray  # (n_out,) int64
    part_token_ids: tuple[tuple[int, ...], ...]  # the input tokens each part owns, in order
    starts: np.ndarray  # (n_in,) character spans of the input tokens, for the HTML report
    ends: np.ndarray

    @property
    def sequence(self) -> np.ndarray:
        """Input then output: what an earlier request leaves in the pool."""
        return np.concatenate([self.input_ids, self.output_ids])


def tokenize_trace(trace: Trace, tokenizer: Tokenizer) -> list[TokenizedRequest]:
    """Tokenize every distinct input and output once, in batches; give each input token to its part."""
    texts = list(dict.fromkeys(t for r in trace.requests for t in (r.input, r.output)))
    encoded = dict(zip(texts, tokenizer.encode_batch(texts)))
    return [_tokenized(request, encoded[request.input], encoded[request.output]) for request in trace.requests]


def _tokenized(request: TraceRequest, inp: Encoded, out: Encoded) -> TokenizedRequest:
    counts = request.part_tokens
    if counts is None or sum(counts) != len(inp.ids):
        counts = tokens_per_part(request, inp)
    bounds = np.cumsum([0, *counts])
    ids = inp.ids.tolist()
    owned = tuple(tuple(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
    return TokenizedRequest(inp.ids, out.ids, owned, inp.starts, inp.ends)


def tokens_per_part(request: TraceRequest, inp: Encoded) -> list[int]:
    """How many tokens each part owns: a token belongs to the part in which it ends (as the server counts).

        text:    |--- part 0 ---|---- part 1 ----|
        tokens:  [t0][t1][t2 ][t3  ][t4][t5]        t3 straddles the seam: it ends in part 1
    """
    part_ends = np.cumsum([len(p.text) for p in request.parts])
    if not len(part_ends):
        return []
    last_char = np.maximum(inp.ends - 1, inp.starts)
    owner = np.minimum(np.searchsorted(part_ends, last_char, side="right"), len(part_ends) - 1)
    owner = np.maximum.accumulate(owner) if len(owner) else owner  # offsets never run backwards
    return np.bincount(owner, minlength=len(part_ends)).tolist()
