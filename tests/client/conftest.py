"""Fixtures of the client tests: the default tokenizer, and an OpenAI-compatible server without segments."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import httpx2
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from segcache.client.tokenizer import load_tokenizer

# The request fields of OpenAI's chat completions API that a plain server accepts.
OPENAI_CHAT_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream",
    "stream_options", "n", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", "logprobs",
    "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "metadata", "store"})


@pytest.fixture(scope="session")
def tokenize():
    """The default model's tokenizer as text -> token ids (no special tokens added)."""
    tokenizer = load_tokenizer()
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


class BodyRecorder:
    """Keeps the JSON body of every POST an httpx2 client sends: what went over the wire."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def __call__(self, request: httpx2.Request) -> None:
        if request.method == "POST":
            self.bodies.append(json.loads(request.content))

    def client(self) -> httpx2.Client:
        return httpx2.Client(event_hooks={"request": [self]})


@pytest.fixture
def recorder() -> BodyRecorder:
    return BodyRecorder()


@pytest.fixture
def plain_server():
    """plain_server(upstream_url, behaviour) -> base URL of an OpenAI-compatible server that lacks segments.

    It forwards OpenAI's own fields to a real segcache server and answers without segment receipts,
    the way servers that never heard of segments do: behaviour "reject-400" answers an unknown field
    like OpenAI's API (400, 'Unrecognized request argument'), "reject-422" like a strict pydantic
    server, and "ignore" drops unknown fields silently, like llama.cpp's server.
    """
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(upstream: str, behaviour: str) -> str:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            unknown = sorted(set(body) - OPENAI_CHAT_FIELDS)
            if unknown and behaviour.startswith("reject"):
                return JSONResponse({"error": {"message": f"Unrecognized request argument supplied: "
                                               f"{', '.join(unknown)}", "type": "invalid_request_error",
                                               "param": None, "code": None}},
                                    status_code=int(behaviour.split("-")[1]))
            known = {k: v for k, v in body.items() if k in OPENAI_CHAT_FIELDS}
            async with httpx.AsyncClient(timeout=300) as client:
                answer = await client.post(upstream + "/v1/chat/completions", json=known)
            data = answer.json()
            (data.get("usage") or {}).pop("segments", None)
            return JSONResponse(data, status_code=answer.status_code)

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the plain OpenAI-compatible server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
