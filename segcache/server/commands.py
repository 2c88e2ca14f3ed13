"""`segcache serve`: start the HTTP server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from segcache.config import ServeConfig, add_config_flags, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="start the OpenAI-compatible server",
                                description="Start the OpenAI-compatible server with the segment-tree KV cache.")
    add_config_flags(serve, ServeConfig)
    serve.set_defaults(run=_serve)
    warm = commands.add_parser("warm", help="prefill files as segments on a running server",
                               description="Send each FILE as a segment (in order) to POST /v1/cache/warm.")
    warm.add_argument("files", nargs="+", type=Path, metavar="FILE")
    warm.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    warm.add_argument("--api-key", default=os.environ.get("SEGCACHE_API_KEY", "none"))
    warm.add_argument("--pin", action="store_true", help="keep the chain from LRU eviction")
    warm.add_argument("--ttl", type=float, help="seconds the segments live")
    warm.set_defaults(run=_warm)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from segcache.server.app import create_app
    from segcache.server.http_protocol import protocol_class
    from segcache.server.shutdown import bound_shutdown

    try:
        config = config_from_args(args, ServeConfig)
    except ValueError as exc:
        print(f"segcache serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    # uvicorn's own limit is a backstop: our streams end in-band at --shutdown-grace, a little before it.
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                           timeout_keep_alive=config.timeout_keep_alive,
                                           http=protocol_class(config.header_timeout),
                                           timeout_graceful_shutdown=config.shutdown_grace + 2))
    bound_shutdown(server, app, config.shutdown_grace)
    _announce_when_ready(server, config)
    server.run()
    return 0


def _announce_when_ready(server, config: ServeConfig) -> None:
    """Print one line once the socket listens, so scripts and tests can wait for it."""
    startup = server.startup

    async def startup_then_announce(sockets=None):
        await startup(sockets=sockets)
        if server.started:
            print(f"segcache ready on http://{config.host}:{config.port}", flush=True)

    server.startup = startup_then_announce


def _warm(args: argparse.Namespace) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"}
    base = args.url.rstrip("/") + "/v1"
    try:
        model = httpx.get(base + "/models", headers=headers, timeout=30).raise_for_status().json()["data"][0]["id"]
        segments = [{"id": f.name, "content": f.read_text(encoding="utf-8"),
                     **({"ttl_seconds": args.ttl} if args.ttl else {})} for f in args.files]
        reply = httpx.post(base + "/cache/warm", headers=headers, timeout=None,
                           json={"model": model, "segments": segments, "pin": args.pin})
    except (httpx.HTTPError, OSError) as exc:
        print(f"segcache warm: {exc}", file=sys.stderr)
        return 1
    if reply.status_code != 200:
        print(f"segcache warm: {reply.status_code} {reply.text}", file=sys.stderr)
        return 1
    body = reply.json()
    for receipt in body["segments"]:
        print(f"{receipt['id']}: {receipt['tokens']} tokens, {receipt['status']}"
              + (f" ({receipt['reason']})" if receipt["reason"] else ""))
    print(json.dumps({k: body[k] for k in ("cached_segments", "root_hash", "expires_at", "pinned")}))
    return 0
