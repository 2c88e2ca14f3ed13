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
from pathlib import Path

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
    """load(spec, dtype, weights) -> LoadedModel, each combination loaded once per session."""
    from segcache.engine.model import load_model

    loaded: dict[tuple[str, str, str], object] = {}

    def get(spec: str = "default", dtype: str = "float32", weights: str = "auto"):
        if (spec, dtype, weights) not in loaded:
            loaded[(spec, dtype, weights)] = load_model(spec, dtype, weights=weights)
        return loaded[(spec, dtype, weights)]

    return get


@pytest.fixture
def serve(tiny_model_dir, tmp_path):
    """serve(*flags, env=None) -> RunningServer: a real `segcache serve` subprocess on a free port."""
    processes: list[subprocess.Popen] = []

    def start(*flags: str, env: dict | None = None, timeout: float = 120) -> RunningServer:
        port = free_port()
        args = list(flags) or ["--model", "tiny"]
        log = open(tmp_path / f"server-{port}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "segcache", "serve", "--port", str(port), *args],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env={**os.environ, **(env or {})})
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        log.flush()
        wait_healthy(url, timeout, process, tmp_path / f"server-{port}.log")
        return RunningServer(url, process=process)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def app_server():
    """app_server(config, loaded) -> RunningServer with .engine: the real app under uvicorn in a thread."""
    import uvicorn

    from segcache.engine.engine import Engine
    from segcache.server.app import create_app

    running: list[tuple[uvicorn.Server, threading.Thread, Engine]] = []

    def start(config: ServeConfig, loaded) -> RunningServer:
        port = free_port()
        config = dataclasses.replace(config, port=port)
        engine = Engine(config, loaded=loaded)
        server = uvicorn.Server(uvicorn.Config(create_app(config, engine=engine), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread, engine))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 60)
        return RunningServer(url, engine=engine)

    yield start
    for server, thread, engine in running:
        server.should_exit = True
        thread.join(timeout=20)
        engine.close()
