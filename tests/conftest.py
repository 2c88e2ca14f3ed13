"""Shared fixtures: the real default model, the tiny model, and real servers on loopback.

`serve(...)` starts `python -m segcache serve` as a subprocess (exactly what a user runs);
`app_server(config, loaded)` runs the same app under uvicorn in a thread, so a test can also reach
the engine (tree.check(), counters) and share one loaded model between servers.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from segcache.config import ServeConfig
from segcache.server.launch import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class RunningServer:
    url: str
    process: subprocess.Popen | None = None
    engine: object | None = None

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def cleared(self, headers: dict | None = None) -> RunningServer:
        """This server after DELETE /v1/cache (the tenant's nodes and segment texts): how tests share one
        server and still start from an empty cache."""
        deadline = time.monotonic() + 30
        while (answer := httpx.delete(self.base_url + "/cache", headers=headers)).status_code == 409:
            assert time.monotonic() < deadline, "a request of an earlier test still holds the cache"
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert httpx.get(self.base_url + "/cache", headers=headers).json()["nodes"] == []
        return self


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from segcache.engine.model import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(model_dir) -> Path:
    from segcache.engine.model import tiny_model_dir as build

    return build()


@pytest.fixture(scope="session")
def load():
    """load(spec, dtype, weights) -> LoadedModel, each combination loaded once per session.

    dtype "auto" is resolved first, so it shares the load (and the lean forward built on it) of the
    dtype it picks on this machine.
    """
    from segcache.engine.model import choose_dtype, load_model

    loaded: dict[tuple[str, object, str], object] = {}

    def get(spec: str = "default", dtype: str = "float32", weights: str = "auto"):
        key = (spec, choose_dtype(dtype, weights), weights)
        if key not in loaded:
            loaded[key] = load_model(spec, dtype, weights=weights)
        return loaded[key]

    return get


class ServerProcesses:
    """Starts real `segcache serve` subprocesses on free ports, logging under `log_dir`; stop() ends them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, *flags: str, env: dict | None = None, timeout: float = 120) -> RunningServer:
        port = free_port()
        args = list(flags) or ["--model", "tiny"]
        log_path = self.log_dir / f"server-{port}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "segcache", "serve", "--port", str(port), *args],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                       env={**os.environ, **(env or {})})
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout, process, log_path)
        return RunningServer(url, process=process)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def serve(tiny_model_dir, tmp_path):
    """serve(*flags, env=None) -> RunningServer: a real `segcache serve` subprocess on a free port."""
    servers = ServerProcesses(tmp_path)
    yield servers.start
    servers.stop()


@pytest.fixture(scope="module")
def serve_for_module(tiny_model_dir, tmp_path_factory):
    """serve(...) for module-scoped fixtures: one server shared by a module's tests, which must leave it
    as they found it (or clear what they used: DELETE /v1/cache)."""
    servers = ServerProcesses(tmp_path_factory.mktemp("servers"))
    yield servers.start
    servers.stop()


class AppServers:
    """The real app under uvicorn in threads, each on its own engine; stop() ends them all."""

    def __init__(self):
        self.running: list[tuple[object, threading.Thread, object]] = []

    def start(self, config: ServeConfig, loaded) -> RunningServer:
        import uvicorn

        from segcache.engine.engine import Engine
        from segcache.server.app import create_app

        port = free_port()
        config = dataclasses.replace(config, port=port)
        engine = Engine(config, loaded=loaded)
        server = uvicorn.Server(uvicorn.Config(create_app(config, engine=engine), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        self.running.append((server, thread, engine))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 60)
        return RunningServer(url, engine=engine)

    def stop(self) -> None:
        for server, thread, engine in self.running:
            server.should_exit = True
            thread.join(timeout=20)
            engine.close()


@pytest.fixture
def app_server():
    """app_server(config, loaded) -> RunningServer with .engine: the real app under uvicorn in a thread."""
    servers = AppServers()
    yield servers.start
    servers.stop()


@pytest.fixture(scope="session")
def app_server_for_session():
    """app_server(...) for session-scoped fixtures (servers that many modules share)."""
    servers = AppServers()
    yield servers.start
    servers.stop()
