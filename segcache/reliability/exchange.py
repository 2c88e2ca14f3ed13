"""Send one step of the load mix and judge the answer: ok, resent, intended 4xx, or error.

An error is anything the server should not have said: a 5xx, a transport failure, a deliberately
bad request answered with the wrong status or code, or a 200 whose body breaks the API contract
(usage missing, more cached than prompt tokens, a receipt per segment missing, a stream that ends
without [DONE] or carries an in-band error).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace

import httpx

from segcache.reliability.target import headers
from segcache.reliability.workload import Step


@dataclass(frozen=True)
class Outcome:
    kind: str
    category: str                 # ok | resent | intended_4xx | error
    status: int | None            # None: no HTTP answer at all
    code: str | None              # the error code, when the answer was an error
    latency_s: float              # client-side, request sent to last byte (both attempts when resent)
    ttft_s: float | None = None   # streaming only: request sent to the first content chunk
    prompt_tokens: int = 0
    cached_tokens: int = 0
    reply: str = ""
    detail: str = ""
    reconnected: bool = False     # the first connection failed before any answer; sent again

    @property
    def succeeded(self) -> bool:
        return self.category in ("ok", "resent")


def send(http: httpx.Client, step: Step, key: str | None) -> Outcome:
    """One step; a hash-only step the server has forgotten is resent with content, as clients do."""
    outcome = _attempt_twice(http, step, key)
    if step.resend is None or (outcome.status, outcome.code) != (400, "segment_not_found"):
        return outcome
    again = _attempt_twice(http, step.resend, key)
    category = "resent" if again.category == "ok" else again.category
    return replace(again, category=category, latency_s=outcome.latency_s + again.latency_s)


def _attempt_twice(http: httpx.Client, step: Step, key: str | None) -> Outcome:
    """Retry once when the connection fails before any answer, as SDK clients do: the server closes a
    kept-alive connection after a 500, and the next request sent on it meets a reset."""
    outcome = _attempt(http, step, key)
    if outcome.status is not None:
        return outcome
    again = _attempt(http, step, key)
    return replace(again, latency_s=outcome.latency_s + again.latency_s, reconnected=True,
                   detail=again.detail or f"reconnected after: {outcome.detail}")


def _attempt(http: httpx.Client, step: Step, key: str | None) -> Outcome:
    started = time.perf_counter()
    try:
        if step.stream:
            status, body, ttft = _stream(http, step, key, started)
        else:
            response = http.request(step.method, step.path, json=step.body, headers=headers(key))
            status, body, ttft = response.status_code, _json(response.content), None
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return Outcome(step.kind, "error", None, None, time.perf_counter() - started,
                       detail=f"{type(exc).__name__}: {exc}")
    return _judge(step, status, body, time.perf_counter() - started, ttft)


def _stream(http: httpx.Client, step: Step, key: str | None, started: float) -> tuple[int, dict, float | None]:
    """Read an SSE answer into one body shaped like a non-streamed one, noting the first content chunk."""
    with http.stream(step.method, step.path, json=step.body, headers=headers(key)) as response:
        if response.status_code != 200:
            return response.status_code, _json(response.read()), None
        ttft, texts, usage, done, error = None, [], None, False, None
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: "):])
            error = chunk.get("error", error)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if ttft is None and (text or choice.get("finish_reason")):
                    ttft = time.perf_counter() - started
                texts.append(text or "")
            usage = chunk.get("usage") or usage
    body = {"choices": [{"message": {"content": "".join(texts)}}], "usage": usage, "stream_done": done}
    return 200, body | ({"stream_error": error} if error else {}), ttft


def _judge(step: Step, status: int, body: dict, latency_s: float, ttft: float | None) -> Outcome:
    code = (body.get("error") or {}).get("code") if isinstance(body.get("error"), dict) else None
    base = Outcome(step.kind, "ok", status, code, latency_s, ttft)
    if status not in step.expect.statuses:
        message = (body.get("error") or {}).get("message", "") if code else json.dumps(body)[:300]
        return replace(base, category="error", detail=f"expected {step.expect.statuses}, got {status} {code}: {message}")
    if status >= 400:
        if step.expect.code is not None and code != step.expect.code:
            return replace(base, category="error", detail=f"expected code {step.expect.code}, got {code}")
        return replace(base, category="intended_4xx" if step.kind.startswith("bad:") else "ok")
    problem = _contract_problem(step, body)
    if problem:
        return replace(base, category="error", detail=problem)
    usage = body.get("usage") or {}
    reply = ((body.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
    return replace(base, prompt_tokens=usage.get("prompt_tokens", 0),
                   cached_tokens=usage.get("cached_prefix_tokens", 0), reply=reply)


def _contract_problem(step: Step, body: dict) -> str | None:
    """What, if anything, a 200 body gets wrong about the API contract."""
    if step.kind == "clear":
        return None if "freed_bytes" in body else "DELETE /v1/cache answered without freed_bytes"
    if step.kind == "warm":
        receipts = body.get("segments") or []
        return None if "root_hash" in body and len(receipts) == step.num_segments else \
            f"warm answered {len(receipts)} receipts for {step.num_segments} segments, root_hash={body.get('root_hash')}"
    if step.stream and (body.get("stream_error") or not body.get("stream_done")):
        return f"stream ended badly: done={body.get('stream_done')} error={body.get('stream_error')}"
    usage = body.get("usage")
    if not usage:
        return "no usage in the answer"
    prompt, cached = usage.get("prompt_tokens"), usage.get("cached_prefix_tokens")
    if not isinstance(prompt, int) or not isinstance(cached, int) or not 0 <= cached <= prompt:
        return f"usage out of range: prompt_tokens={prompt} cached_prefix_tokens={cached}"
    if len(usage.get("segments") or []) != step.num_segments:
        return f"{len(usage.get('segments') or [])} receipts for {step.num_segments} segments"
    return None


def _json(content: bytes) -> dict:
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"raw": content[:300].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"raw": value}
