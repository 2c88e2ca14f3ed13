"""`segcache serve`: start the HTTP server."""

from __future__ import annotations

import argparse
import sys

from segcache.config import ServeConfig, add_config_flags, config_from_args


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="start the OpenAI-compatible server",
                                description="Start the OpenAI-compatible server with the segment-tree KV cache.")
    add_config_flags(serve, ServeConfig)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from segcache.server.app import create_app

    try:
        config = config_from_args(args, ServeConfig)
    except ValueError as exc:
        print(f"segcache serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level))
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
