"""segcache serve | warm | analyze | replay | bench | lint | audit"""

from __future__ import annotations

import argparse
import sys

from segcache.bench import commands as bench_commands
from segcache.client import commands as client_commands
from segcache.reliability import commands as reliability_commands
from segcache.server import commands as server_commands
from segcache.trace import commands as trace_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (server_commands, trace_commands, bench_commands, client_commands, reliability_commands):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
