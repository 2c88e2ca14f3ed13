"""segcache serve | warm | analyze | replay | bench | lint | load | audit"""

from __future__ import annotations

import argparse
import importlib
import sys

# Which module registers each command. Only the module of the command being run is imported: the
# benchmarks and the client bring matplotlib and the openai SDK (~2.6 s of imports), which `serve` never uses.
COMMANDS = {
    "serve": "segcache.server.commands",
    "warm": "segcache.server.commands",
    "analyze": "segcache.trace.commands",
    "replay": "segcache.trace.commands",
    "bench": "segcache.bench.commands",
    "lint": "segcache.client.commands",
    "load": "segcache.reliability.commands",
    "audit": "segcache.reliability.commands",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with `command`'s alone when it is one of ours."""
    parser = argparse.ArgumentParser(prog="segcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in names:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
