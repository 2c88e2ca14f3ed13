"""Replay over HTTP with the official openai SDK, and the served-versus-predicted report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import httpx
import openai

from segcache.trace.records import Trace
from segcache.trace.replay import Prediction, ReplayCall, call_of, predict, truncate


@dataclass(frozen=True)
class ReplayRow:
    request: int  # 1-based, as in the trace
    endpoint: str  # chat.completions | completions
    input_tokens: int | None  # as the server counted them; None if the request failed
    predicted_input_tokens: int
    cached_tokens: int | None  # what the server reported as read from its cache
    predicted_cached_tokens: int
    error: str | None = None

    @property
    def cached_share(self) -> float | None:
        """The share of the request's prompt tokens the server read from its cache."""
        if self.cached_tokens is None or not self.input_tokens:
            return None
        return self.cached_tokens / self.input_tokens

    @property
    def agrees(self) -> bool:
        return (self.error is None and self.cached_tokens == self.predicted_cached_tokens
                and self.input_tokens == self.predicted_input_tokens)


@dataclass(frozen=True)
class ReplayOptions:
    url: str  # http://host:port, with or without /v1
    api_key: str | None = None
    model: str | None = None  # default: the first model the server lists
    max_tokens_per_request: int | None = None  # truncate each prompt's content to about this many tokens
    max_output_tokens: int = 1  # the replies are not fed back (the trace's own are), so keep them short
    keep_cache: bool = False  # by default the tenant's cache is cleared first, as the prediction assumes


def replay(trace: Trace, options: ReplayOptions, tokenizer) -> list[ReplayRow]:
    """Send every request in order; `tokenizer` is the served model's transformers tokenizer."""
    calls = [call_of(request) for request in trace.requests]
    if options.max_tokens_per_request is not None:
        calls = [truncate(call, tokenizer, options.max_tokens_per_request) for call in calls]
    base_url = options.url.rstrip("/").removesuffix("/v1")
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=options.api_key or "none", max_retries=0)
    model = options.model or client.models.list().data[0].id
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    if not options.keep_cache:
        httpx.delete(base_url + "/v1/cache", headers=headers, timeout=60).raise_for_status()
    predictions = predict(calls, tokenizer, server_block_tokens(base_url, headers))
    return [_send(client, model, index, call, prediction, options.max_output_tokens)
            for index, (call, prediction) in enumerate(zip(calls, predictions), 1)]


def server_block_tokens(base_url: str, headers: dict) -> int:
    """The server's --block-tokens, as its GET /v1/cache reports it: the prediction cuts parts the same way."""
    response = httpx.get(base_url + "/v1/cache", headers=headers, timeout=60)
    response.raise_for_status()
    block_tokens = response.json().get("block_tokens")
    if not isinstance(block_tokens, int):
        raise ValueError(f"{base_url}/v1/cache does not report block_tokens: is this an older segcache?")
    return block_tokens


def _send(client: openai.OpenAI, model: str, index: int, call: ReplayCall, prediction: Prediction,
          max_output_tokens: int) -> ReplayRow:
    endpoint = "completions" if call.messages is None else "chat.completions"
    extra = {"segments": list(call.segments)} if call.segments else None
    try:
        if call.messages is None:
            response = client.completions.create(model=model, prompt=call.prompt or "", max_tokens=max_output_tokens,
                                                 temperature=0, extra_body=extra)
        else:
            response = client.chat.completions.create(model=model, messages=list(call.messages),  # type: ignore[arg-type]
                                                      max_tokens=max_output_tokens, temperature=0, extra_body=extra)
    except openai.APIStatusError as exc:
        return ReplayRow(index, endpoint, None, prediction.input_tokens, None, prediction.cached_tokens,
                         error=f"{exc.status_code}: {_error_message(exc)}")
    usage = response.usage
    cached = getattr(usage, "cached_prefix_tokens", None)
    if cached is None and usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens
    return ReplayRow(index, endpoint, usage.prompt_tokens, prediction.input_tokens, cached, prediction.cached_tokens)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") if isinstance(error, dict) and error.get("message") else exc.message)


def render_rows_json(rows: Sequence[ReplayRow]) -> str:
    return json.dumps([{**asdict(row), "cached_share": row.cached_share, "agrees": row.agrees} for row in rows],
                      indent=2)


def render_rows_table(rows: Sequence[ReplayRow]) -> str:
    """Served beside predicted per request; disagreements marked with '!'."""
    lines = [f"{'#':>4}  {'input served/predicted':>22}  {'cached served':>13}  {'share':>6}  {'cached predicted':>16}"]
    for row in rows:
        served_input = "-" if row.input_tokens is None else f"{row.input_tokens:,}"
        served_cached = "-" if row.cached_tokens is None else f"{row.cached_tokens:,}"
        share = "-" if row.cached_share is None else f"{row.cached_share:.1%}"
        flag = "" if row.agrees else "  ! " + (row.error or "differs")
        lines.append(f"{row.request:>4}  {served_input + ' / ' + format(row.predicted_input_tokens, ','):>22}  "
                     f"{served_cached:>13}  {share:>6}  {row.predicted_cached_tokens:>16,}{flag}")
    served = sum(row.cached_tokens or 0 for row in rows)
    predicted = sum(row.predicted_cached_tokens for row in rows)
    disagreements = sum(not row.agrees for row in rows)
    lines.append(f"cached tokens: served {served:,}, predicted {predicted:,}; "
                 f"{disagreements} of {len(rows)} requests disagree")
    return "\n".join(lines)
