"""Server configuration: one frozen dataclass, validated once; the CLI flags are derived from it."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30}
DTYPES = ("auto", "float32", "bfloat16")
WEIGHT_FORMATS = ("auto", "bf16", "float32", "int8", "int4")   # engine/weights.py explains each
BOUNDARY_POLICIES = ("reprocess", "reject")


def parse_bytes(text: str | int) -> int:
    """'512MiB', '2G', '1000000' -> bytes. Plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"cannot read {text!r} as a size: use a number of bytes or e.g. 512MiB, 2GiB")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _flag(default: Any, help: str, parse: Any = None, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


@dataclass(frozen=True)
class ServeConfig:
    host: str = _flag("127.0.0.1", "address to listen on")
    port: int = _flag(8000, "port to listen on")
    model: str = _flag("default", "'default' (the embedded SmolLM2-135M-Instruct), 'tiny' (a small randomly "
                       "initialised model with the same tokenizer, for mechanics only), a local Hugging Face "
                       "model folder or a .gguf file")
    model_id: str | None = _flag(None, "name clients use in 'model' (default: derived from --model)")
    dtype: str = _flag("auto", "weights and KV dtype; auto = bfloat16 where the CPU has native bf16",
                       choices=DTYPES)
    weights: str = _flag("auto", "weight format of the projections: bf16/float32 dense, int8 (per-channel, "
                         "quantized at load), int4 (a GGUF's own Q4 blocks); auto = int4 where the model file "
                         "has Q4 blocks and the dtype is bfloat16, else dense", choices=WEIGHT_FORMATS)
    cache_bytes: int = _flag(2 << 30, "KV cache budget in bytes (e.g. 512MiB); 0 disables caching",
                             parse=parse_bytes)
    default_ttl: float | None = _flag(None, "seconds a cached segment lives when a request sets no ttl_seconds")
    pin_bytes_per_tenant: int = _flag(512 << 20, "KV bytes each tenant may pin against eviction",
                                      parse=parse_bytes)
    segment_store_bytes: int = _flag(256 << 20, "bytes of segment text kept for hash-only references",
                                     parse=parse_bytes)
    api_keys: str | None = _flag(None, "file of 'key:tenant' lines (also SEGCACHE_API_KEYS=key:tenant,...); "
                                 "none configured = single tenant, any key accepted")
    threads: int | None = _flag(None, "torch threads, fixed for the server's life (default: all cores)")
    max_tokens_default: int = _flag(256, "completion tokens when a request sets no max_tokens")
    trace_file: str | None = _flag(None, "append every request (parts, output, usage, timings) to this JSONL file")
    log_level: str = _flag("info", "uvicorn log level")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be 1..65535, got {self.port}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weights!r}")
        dense = {"bf16": "bfloat16", "float32": "float32"}.get(self.weights)
        if dense and self.dtype not in ("auto", dense):
            raise ValueError(f"--weights {self.weights} runs in {dense}: drop --dtype {self.dtype} or pick "
                             "another --weights")
        for name in ("cache_bytes", "pin_bytes_per_tenant", "segment_store_bytes", "max_tokens_default"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.default_ttl is not None and self.default_ttl <= 0:
            raise ValueError("--default-ttl must be a positive number of seconds")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")

    @property
    def cache_enabled(self) -> bool:
        return self.cache_bytes > 0


def add_config_flags(parser: argparse.ArgumentParser, cls: type = ServeConfig) -> None:
    """One --flag per dataclass field, typed and documented from the field itself."""
    for f in dataclasses.fields(cls):
        parse = _explained(f.metadata.get("parse") or _field_type(f))
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=parse, default=f.default,
                            choices=f.metadata.get("choices"), help=f"{f.metadata.get('help', '')} "
                            f"(default: {f.default})")


def config_from_args(args: argparse.Namespace, cls: type = ServeConfig) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _explained(parse: Any) -> Any:
    """argparse shows its own words for a ValueError; ours say what a valid value looks like."""
    def parse_or_explain(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    parse_or_explain.__name__ = getattr(parse, "__name__", "value")
    return parse_or_explain


def _field_type(f: dataclasses.Field) -> Any:
    text = str(f.type)
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str
