"""Random English-like text: prompts that tokenize like prose, fresh on every draw.

Random ids or letters would tokenize into many more tokens per character than real text does; a
vocabulary harvested once from the standard library's docstrings keeps prompts realistic offline.
"""

from __future__ import annotations

import functools
import random
import re

_MODULES = ("json", "collections", "textwrap", "string", "functools", "itertools")


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """Sorted lowercase words of 3-10 letters found in a few stdlib modules' documentation."""
    from segcache.bench.corpus import reference_docs

    text = "\n".join(reference_docs(_MODULES))
    return tuple(sorted({w.lower() for w in re.findall(r"\b[A-Za-z]{3,10}\b", text)}))


def random_words(rng: random.Random, num_words: int) -> str:
    """`num_words` words drawn with replacement, as sentences of 8-16 words."""
    words = vocabulary()
    sentences, remaining = [], num_words
    while remaining > 0:
        size = min(remaining, rng.randint(8, 16))
        chosen = [rng.choice(words) for _ in range(size)]
        sentences.append(" ".join(chosen).capitalize() + ".")
        remaining -= size
    return " ".join(sentences)
