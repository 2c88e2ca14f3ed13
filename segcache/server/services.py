"""Everything a route needs, built once in the app's lifespan and kept on app.state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request

from segcache.cache.registry import Registry
from segcache.cache.shared_names import SharedRegistry
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.request import EngineRequest, Finished, PromptReport
from segcache.server.auth import KeyMap
from segcache.server.errors import ApiError
from segcache.server.metrics import Metrics, ServerFigures, TenantFigures
from segcache.server.shutdown import Shutdown


@dataclass
class Services:
    config: ServeConfig
    engine: Engine
    keys: KeyMap
    metrics: Metrics
    registry: Registry | SharedRegistry = field(default_factory=Registry)   # SharedRegistry with --shared-cache
    trace: object | None = None          # a TraceWriter when --trace-file is set
    started_at: int = field(default_factory=lambda: int(time.time()))
    shutdown: Shutdown = field(default_factory=Shutdown)

    def tenant(self, request: Request) -> str:
        return self.keys.tenant_for(request.headers.get("authorization"))

    def is_admin(self, request: Request) -> bool:
        return self.keys.is_admin(request.headers.get("authorization"))

    def viewer(self, request: Request) -> str | None:
        """Whose figures a caller may read: None for the admin (everything), else its own tenant.

        Without configured keys there is one tenant, so it reads everything too."""
        if self.is_admin(request) or not self.keys.multi_tenant:
            return None
        return self.tenant(request)

    def figures(self) -> ServerFigures:
        engine = self.engine
        names = sorted(set(engine.tenants) | self.keys.tenants)
        queued = {tenant: engine.queued(tenant) for tenant in names}

        def look(tree) -> ServerFigures:
            tenants = tuple(TenantFigures(tenant, tree.scope_bytes(scope := engine.scope(tenant)),
                                          tree.scope_nodes(scope), tree.pinned_bytes(scope), tree.share(scope),
                                          queued[tenant]) for tenant in names)
            return ServerFigures(tree.used_bytes, self.config.cache_bytes, tree.num_nodes, engine.queue_depth, tenants)
        return engine.cache.read(look)

    def check_model(self, model: str) -> None:
        served = self.engine.loaded.model_id
        if model not in (served, self.config.model):
            raise ApiError(404, f"model {model!r} is not served here; this server serves {served!r} "
                           "(see GET /v1/models)", "model_not_found", "model")

    def observe_prompt(self, tenant: str, report: PromptReport) -> None:
        self.metrics.observe_prompt(tenant, report)

    def observe_finished(self, request: EngineRequest, report: PromptReport, finished: Finished,
                         timings: dict, trace_fields: dict | None = None) -> None:
        """`trace_fields` add to or override the trace record (endpoint, prompt_cache_key)."""
        self.metrics.observe_finished(request.tenant, finished, timings)
        if self.trace is not None:
            record = trace_record(self.engine.loaded.model_id, request, report, finished, timings)
            self.trace.write({**record, **(trace_fields or {})})


def services_of(request: Request) -> Services:
    return request.app.state.services


def trace_record(model: str, request: EngineRequest, report: PromptReport, finished: Finished | None,
                 timings: dict) -> dict:
    from segcache.server.protocol import usage

    return {
        "time": time.time(), "tenant": request.tenant, "model": model,
        "endpoint": "completions" if request.kind == "completion" else "chat.completions",
        "parts": list(report.parts), "input": "".join(p["text"] for p in report.parts),
        "output": finished.text if finished else "", "messages": list(request.messages),
        "segments": [{"id": s.text.id, "hash": s.text.hash, "content": s.text.content} for s in request.segments],
        "usage": usage(report, finished.completion_tokens if finished else 0), "timings": timings}
