"""The FastAPI app factory; the model loads in the lifespan, never at import."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from segcache.cache.persistent import PersistentRegistry
from segcache.cache.registry import Registry
from segcache.cache.shared_names import SharedRegistry
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.invariance import BatchingRefused
from segcache.server.auth import KeyMap
from segcache.server.errors import install_error_handlers
from segcache.server.limits import BodyLimit
from segcache.server.openapi import install_openapi
from segcache.server.metrics import Metrics
from segcache.server.services import Services

log = logging.getLogger("segcache")


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """`engine` lets a test share one loaded model between apps; normally the lifespan builds it."""
    keys = KeyMap.load(config.api_keys, admin_key=config.admin_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_engine = engine is None
        try:
            running = engine or Engine(config)
        except BatchingRefused as exc:   # say why in one line, not only in a traceback
            log.error("segcache: %s", exc)
            raise
        registry = _registry(config, running)
        services = Services(config=config, engine=running, keys=keys, metrics=Metrics(running.tenant_of_scope),
                            registry=registry, trace=_trace_writer(config))
        services.engine.cache.observers.append(services.metrics.observe_evictions)
        app.state.services = services
        _announce(services)
        yield
        if own_engine:
            services.engine.close()

    app = FastAPI(title="segcache", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    from segcache.server import anthropic, cache_routes, responses, routes

    app.include_router(routes.router)
    app.include_router(cache_routes.router)
    app.include_router(anthropic.router)
    app.include_router(responses.router)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    install_openapi(app)
    return app


def _registry(config: ServeConfig, engine: Engine):
    """Named segments: in the disk tier's manifest with --disk-cache, shared by replicas with --shared-cache."""
    limits = (config.max_registry_entries, config.max_registry_bytes)
    local = PersistentRegistry(engine.disk.manifest, *limits) if engine.disk is not None else Registry(*limits)
    return SharedRegistry(local, engine.shared) if engine.shared is not None else local


def _trace_writer(config: ServeConfig):
    if not config.trace_file:
        return None
    from segcache.trace.log import TraceWriter

    return TraceWriter(config.trace_file)


def _announce(services: Services) -> None:
    loaded, config = services.engine.loaded, services.config
    tenancy = (f"{len(services.keys.tenants)} tenants, {len(services.keys.keys)} API keys"
               if services.keys.multi_tenant else "single tenant: no API keys configured, any key accepted")
    cache = f"cache {config.cache_bytes} bytes" if config.cache_enabled else "cache off (--cache-bytes 0)"
    log.warning("segcache: model %s (%s, weights %s, context %d), %s, %s", loaded.model_id, loaded.dtype_name,
                loaded.weights.format, loaded.max_context, cache, tenancy)
    log.warning("segcache: weights %s because %s", loaded.weights.format, loaded.weights.reason)
    log.warning("segcache: prefill spans: %s", services.engine.spans.reason)
    verdict = services.engine.batching
    log.warning("segcache: batching %s, up to %d running requests (%s)", "on" if verdict.batched else "off",
                config.max_batch, verdict.reason)
