"""One generation as a route sees it, whatever API it speaks.

`open_generation` queues the request and waits for the prompt report, so prompt errors (bad
segments, a prompt too long) surface before any byte of the response is sent. The `Run` observes
every event once, for metrics, timings and the trace log; each API then only maps text and usage
into its own JSON or events.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from segcache.engine.request import EngineRequest, Finished, PromptReport, TextDelta
from segcache.server import protocol
from segcache.server.segments import remember_segments
from segcache.server.services import Services


class Run:
    """What one generation observed: first-token time, the final event, and the trace record."""

    def __init__(self, services: Services, request: EngineRequest, report: PromptReport, started: float,
                 trace_fields: dict | None = None):
        self.services, self.request, self.report, self.started = services, request, report, started
        self.trace_fields = trace_fields or {}
        self.first_token_at: float | None = None
        self.finished: Finished | None = None
        services.observe_prompt(request.tenant, report)

    def observe(self, event) -> None:
        if isinstance(event, TextDelta) and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        elif isinstance(event, Finished):
            self.finished = event
            self.services.observe_finished(self.request, self.report, event, self.timings(), self.trace_fields)

    @property
    def completion_tokens(self) -> int:
        return self.finished.completion_tokens if self.finished else 0

    def usage(self) -> dict:
        return protocol.usage(self.report, self.completion_tokens)

    def timings(self) -> dict:
        now = time.perf_counter()
        first = self.first_token_at or now
        return {"queue_s": round(self.report.queue_s, 6), "prefill_s": round(self.report.prefill_s, 6),
                "ttft_s": round(first - self.started, 6),
                "decode_s": round(self.finished.decode_s, 6) if self.finished else None,
                "total_s": round(now - self.started, 6)}


@dataclass
class Generation:
    run: Run
    events: AsyncIterator

    @property
    def report(self) -> PromptReport:
        return self.run.report

    async def text_events(self) -> AsyncIterator[TextDelta]:
        """The reply's text events (text, and logprobs when asked) as they are decoded; afterwards
        `run.finished` holds the final event."""
        async for event in self.events:
            self.run.observe(event)
            self.run.services.shutdown.raise_if_overdue()
            if isinstance(event, TextDelta):
                yield event

    async def deltas(self) -> AsyncIterator[str]:
        """The reply's text as it is decoded."""
        async for event in self.text_events():
            yield event.text

    async def close(self) -> None:
        """Stop early (the client went away): closing the engine stream cancels decode. A stream
        that yields server-sent events calls this in its `finally`."""
        await self.events.aclose()

    async def finish(self, http=None) -> Finished | None:
        """Run to the end; None if the client (`http`, a starlette Request) went away first, in which
        case the engine stream is closed, which cancels the request within one decode step."""
        async def consume() -> None:
            async for _ in self.deltas():
                pass

        consuming = asyncio.ensure_future(consume())
        watching = asyncio.ensure_future(_disconnected(http)) if http is not None else None
        try:
            await asyncio.wait([t for t in (consuming, watching) if t is not None], return_when=asyncio.FIRST_COMPLETED)
            if not consuming.done():
                consuming.cancel()
                await asyncio.gather(consuming, return_exceptions=True)
                return None
            consuming.result()
        finally:
            if watching is not None:
                watching.cancel()
            await self.close()
        assert self.run.finished is not None
        return self.run.finished


async def _disconnected(http) -> None:
    """Returns once the client has closed its connection (the body is already read)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def open_generation(services: Services, request: EngineRequest, trace_fields: dict | None = None) -> Generation:
    started = time.perf_counter()
    events = services.engine.stream(request).__aiter__()
    report = await events.__anext__()      # prompt errors surface here, before any byte is sent
    assert isinstance(report, PromptReport)
    # Segment texts are kept for hash-only references only once the request is accepted.
    remember_segments(request.segments, request.tenant, services.engine.segment_store)
    return Generation(Run(services, request, report, started, trace_fields), events)


def sse_data(payload: dict, event: str | None = None) -> str:
    """One server-sent event; `event` names it (Anthropic and Responses streams do, chat chunks do not)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"
