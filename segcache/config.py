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
BATCHING_MODES = ("auto", "on", "off")


def parse_bytes(text: str | int) -> int:
    """'512MiB', '2G', '1000000' -> bytes. Plain numbers are bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"cannot read {text!r} as a size: use a number of bytes or e.g. 512MiB, 2GiB")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def parse_share(text: str | int) -> int | str:
    """'auto', 'off' or a size ('256MiB') -> 'auto', 'off' or bytes."""
    if isinstance(text, str) and text.strip().lower() in ("auto", "off"):
        return text.strip().lower()
    try:
        return parse_bytes(text)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a tenant share: use 'auto', 'off' or a size such as 256MiB") \
            from None


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
    segment_store_bytes: int = _flag(256 << 20, "bytes of segment text kept for hash-only references, per tenant",
                                     parse=parse_bytes)
    tenant_cache_share: int | str = _flag("auto", "KV bytes each tenant may keep before others' traffic evicts it; "
                                          "'auto' = the budget divided by the tenants holding KV, at least 1/8 "
                                          "of it; 'off' = one LRU for all tenants. Pins are limited to this "
                                          "share (auto: 1/8 of the budget)", parse=parse_share)
    admin_key: str | None = _flag(None, "API key that reads server-wide metrics, health and the tenant list "
                                  "(also SEGCACHE_ADMIN_KEY)")
    max_body_bytes: int = _flag(8 << 20, "largest request body accepted (413 request_too_large)", parse=parse_bytes)
    max_prompt_chars: int = _flag(1 << 20, "most characters of text (messages, prompt, segments) in one request, "
                                  "checked before tokenizing")
    max_messages: int = _flag(2048, "most messages in one chat request")
    max_stop_bytes: int = _flag(1024, "most UTF-8 bytes of all stop strings of one request together")
    max_registry_entries: int = _flag(1024, "named segments each tenant may register")
    max_registry_bytes: int = _flag(64 << 20, "UTF-8 bytes of named segment content each tenant may register",
                                    parse=parse_bytes)
    timeout_keep_alive: float = _flag(5.0, "seconds an idle keep-alive connection stays open")
    header_timeout: float = _flag(10.0, "seconds a client has to send a request's line and headers")
    shutdown_grace: float = _flag(10.0, "seconds SIGTERM waits for running requests before cancelling them")
    api_keys: str | None = _flag(None, "file of 'key:tenant' lines (also SEGCACHE_API_KEYS=key:tenant,...); "
                                 "none configured = single tenant, any key accepted")
    threads: int | None = _flag(None, "torch threads, fixed for the server's life (default: all cores)")
    max_tokens_default: int = _flag(256, "completion tokens when a request sets no max_tokens")
    batching: str = _flag("auto", "decode running requests in one batched forward: auto = only where the start-up "
                          "check finds every row bit-identical to its lone computation; on = refuse to start "
                          "otherwise; off = one request per decode forward", choices=BATCHING_MODES)
    max_batch: int = _flag(16, "requests running at once (decoding or prefilling); the rest wait in a FIFO queue")
    max_running_kv_bytes: int = _flag(1 << 30, "KV buffer bytes all running requests may hold together; "
                                      "a request that would exceed it waits (one always runs)", parse=parse_bytes)
    block_tokens: int = _flag(128, "tokens per prefill block: each prompt part is computed and cached in blocks "
                              "of at most this many tokens, so a part whose tail changed reuses its first blocks")
    prefill_span_tokens: int = _flag(512, "tokens one prefill forward may span: consecutive whole blocks (at least one) "
                                     "run in one forward, their matmuls block by block, so small blocks stay cheap "
                                     "and answers stay bit-identical; 0 = one block per forward")
    idle_prefill_span_tokens: int = _flag(2048, "tokens one prefill forward may span while no other request decodes or "
                                          "waits (none waits on the step), where a span's kernels give every row its own "
                                          "bits (AMX): a long prompt in fewer, larger forwards; at most "
                                          "--prefill-span-tokens elsewhere, or when this is smaller")
    disk_cache: str | None = _flag(None, "directory for the disk tier: cached KV is written behind to one file per "
                                   "node, with a SQLite manifest of the tree, the named segments and segment texts, "
                                   "so a restarted server finds them again (default: RAM only)")
    disk_cache_bytes: int = _flag(16 << 30, "bytes of KV files the disk tier keeps (LRU beyond)", parse=parse_bytes)
    shared_cache: str | None = _flag(None, "a Valkey/Redis store (redis://HOST:PORT/DB) where replicas share node KV; "
                                     "set its maxmemory and an LRU maxmemory-policy there. A store that is down "
                                     "costs a recompute and a warning, never an error")
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
        for name in ("cache_bytes", "pin_bytes_per_tenant", "segment_store_bytes", "max_tokens_default",
                     "max_registry_bytes", "timeout_keep_alive", "header_timeout", "shutdown_grace"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.default_ttl is not None and self.default_ttl <= 0:
            raise ValueError("--default-ttl must be a positive number of seconds")
        for name in ("max_body_bytes", "max_prompt_chars", "max_messages", "max_stop_bytes", "max_registry_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        parse_share(self.tenant_cache_share)
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"--batching must be one of {', '.join(BATCHING_MODES)}, got {self.batching!r}")
        if self.block_tokens < 1:
            raise ValueError("--block-tokens must be at least 1")
        if self.prefill_span_tokens < 0:
            raise ValueError("--prefill-span-tokens must not be negative")
        if self.idle_prefill_span_tokens < 0:
            raise ValueError("--idle-prefill-span-tokens must not be negative")
        if self.max_batch < 1:
            raise ValueError("--max-batch must be at least 1")
        if self.max_running_kv_bytes < 0:
            raise ValueError("--max-running-kv-bytes must not be negative")
        if self.shared_cache is not None and not self.shared_cache.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--shared-cache must be a redis:// URL such as redis://127.0.0.1:6379/0, "
                             f"got {self.shared_cache!r}")
        if self.disk_cache_bytes < 0:
            raise ValueError("--disk-cache-bytes must not be negative")
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
