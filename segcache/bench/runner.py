"""Drive one system through the workload over HTTP with the official openai SDK, streaming.

Per request: time to the first content chunk (TTFT), time to the last, completion tokens, and the
server's own account of reused prompt tokens beside what the workload's structure predicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from segcache.bench import peers, usage
from segcache.bench.structure import RenderedPrompt, ReuseModel, render
from segcache.bench.workload import Step, Workload, messages_for, segments_for

_LOG_WAIT_S = 5.0  # llama.cpp prints its timings just before the last chunk; allow the log to catch up


@dataclass(frozen=True)
class RequestResult:
    index: int
    agent_id: int
    turn: int
    ttft_s: float
    latency_s: float
    decode_s: float             # first content chunk to last
    completion_tokens: int
    usage: usage.PromptUsage    # as the server reported it (or estimated, see usage.source)
    expected_reused: int        # what the workload's structure predicts for this system
    prompt_ids: tuple[int, ...]  # the prompt as the default tokenizer renders it
    part_ends: tuple[int, ...]   # token index at which each of its parts ends
    reply: str


@dataclass(frozen=True)
class SystemResult:
    name: str
    requests: tuple[RequestResult, ...]
    total_s: float       # wall time of the whole workload, server start excluded
    startup_s: float
    peak_rss_bytes: int  # the server's process tree, sampled during the workload
    kv_bytes: int | None  # cached KV bytes by the server's own account (None: it keeps no cache)
    held_tokens: int      # prompt tokens the cache holds by the workload's structure (each copy counted)


@dataclass(frozen=True)
class _Streamed:
    ttft_s: float
    latency_s: float
    decode_s: float
    num_chunks: int
    reply: str
    usage: dict | None


def run_system(spec: peers.SystemSpec, workload: Workload, tokenizer: Any, options: peers.PeerOptions,
               log_dir: Path) -> SystemResult:
    started = time.perf_counter()
    server = peers.start(spec, options, log_dir)
    try:
        startup_s = time.perf_counter() - started
        client = OpenAI(base_url=server.base_url, api_key="segcache-bench", timeout=900, max_retries=0)
        model_id = client.models.list().data[0].id
        with peers.PeakMemory(server.process.pid) as memory:
            started = time.perf_counter()
            requests, held_tokens = _run_steps(spec, workload, tokenizer, client, model_id, server)
            total_s = time.perf_counter() - started
        kv_bytes = _kv_bytes(spec, server, len(requests))
    finally:
        server.stop()
    return SystemResult(name=spec.name, requests=requests, total_s=total_s, startup_s=startup_s,
                        peak_rss_bytes=memory.peak_bytes, kv_bytes=kv_bytes, held_tokens=held_tokens)


def _run_steps(spec: peers.SystemSpec, workload: Workload, tokenizer: Any, client: OpenAI, model_id: str,
               server: peers.RunningServer) -> tuple[tuple[RequestResult, ...], int]:
    histories: dict[int, tuple[dict, ...]] = {}
    reuse = ReuseModel(spec.reuse_model)
    results = []
    for step in workload.steps:
        history = histories.get(step.agent.agent_id, ())
        prompt = render(tokenizer, workload, step, history, by_segments=spec.sends_segments)
        expected = reuse.expected_reused(prompt)
        log_start = server.log_size()
        streamed = _stream(client, model_id, _request(spec, workload, step, history))
        reported = _reported_usage(spec, streamed, server, log_start, prompt, expected)
        reuse.record(prompt, tuple(tokenizer.encode(streamed.reply, add_special_tokens=False)))
        histories[step.agent.agent_id] = history + (
            {"role": "user", "content": step.user_message}, {"role": "assistant", "content": streamed.reply})
        results.append(RequestResult(
            index=step.index, agent_id=step.agent.agent_id, turn=step.turn, ttft_s=streamed.ttft_s,
            latency_s=streamed.latency_s, decode_s=streamed.decode_s,
            completion_tokens=reported.completion_tokens or streamed.num_chunks, usage=reported,
            expected_reused=expected, prompt_ids=prompt.token_ids, part_ends=prompt.part_token_ends,
            reply=streamed.reply))
    return tuple(results), reuse.held_tokens()


def _request(spec: peers.SystemSpec, workload: Workload, step: Step, history: tuple[dict, ...]) -> dict:
    request = {"messages": messages_for(workload, step, history, with_system=not spec.sends_segments),
               "max_tokens": workload.max_tokens}
    if spec.sends_segments:
        request["extra_body"] = {"segments": segments_for(workload, step)}
    return request


def _stream(client: OpenAI, model_id: str, request: dict) -> _Streamed:
    started = time.perf_counter()
    first = last = None
    pieces, reported_usage = [], None
    stream = client.chat.completions.create(model=model_id, stream=True, temperature=0.0, seed=0,
                                            stream_options={"include_usage": True}, **request)
    for chunk in stream:
        if chunk.usage is not None:
            reported_usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                last = time.perf_counter()
                first = first or last
                pieces.append(choice.delta.content)
    ended = time.perf_counter()
    first = first or ended
    return _Streamed(ttft_s=first - started, latency_s=ended - started, decode_s=(last or first) - first,
                     num_chunks=len(pieces), reply="".join(pieces), usage=reported_usage)


def _reported_usage(spec: peers.SystemSpec, streamed: _Streamed, server: peers.RunningServer, log_start: int,
                    prompt: RenderedPrompt, expected: int) -> usage.PromptUsage:
    if spec.usage_format == "segcache":
        if streamed.usage is None:
            raise RuntimeError(f"{spec.name} sent no usage chunk although stream_options.include_usage was set")
        return usage.from_segcache_usage(streamed.usage)
    deadline = time.monotonic() + _LOG_WAIT_S
    while True:
        parsed = usage.from_llamacpp_log(server.read_log(log_start), prompt_tokens=len(prompt.token_ids))
        if parsed is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if parsed is not None:
        return parsed
    return usage.PromptUsage(prompt_tokens=len(prompt.token_ids), reused_tokens=expected,
                             completion_tokens=None, source="estimated")


def _kv_bytes(spec: peers.SystemSpec, server: peers.RunningServer, num_requests: int) -> int | None:
    """segcache: `bytes` from GET /v1/cache; llama-cpp-python: the state sizes its log says it saved."""
    if spec.reuse_model in ("none", "prefix-last"):
        return None
    if spec.usage_format == "segcache":
        return httpx.get(server.base_url + "/cache", timeout=30).json()["bytes"]
    deadline = time.monotonic() + _LOG_WAIT_S  # the last state is saved after the last chunk went out
    while usage.llamacpp_saved_states(server.read_log(0)) < num_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    return usage.llamacpp_cached_bytes(server.read_log(0))
