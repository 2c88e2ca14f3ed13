"""CLI subcommands of segcache.bench: `segcache bench <benchmark>`."""

import argparse

from segcache.bench import (agents, apis, concurrent, constrained, decode, hit, opencode, prefill, replicas, restart,
                           tiers, weights)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bench` and its own benchmarks below it; each sets args.run to a function(args) -> exit code."""
    bench = commands.add_parser("bench", help="benchmarks against real peers",
                                description="Benchmarks: each runs real servers on loopback and prints figures.")
    bench_subcommands = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    agents.register(bench_subcommands)  # segcache bench agents
    hit.register(bench_subcommands)     # segcache bench hit
    concurrent.register(bench_subcommands)  # segcache bench concurrent
    apis.register(bench_subcommands)    # segcache bench apis
    constrained.register(bench_subcommands)   # segcache bench constrained
    weights.register(bench_subcommands)  # segcache bench weights
    decode.register(bench_subcommands)   # segcache bench decode
    prefill.register(bench_subcommands)  # segcache bench prefill
    tiers.register(bench_subcommands)   # segcache bench tiers
    opencode.register(bench_subcommands)  # segcache bench opencode
    restart.register(bench_subcommands)   # segcache bench restart
    replicas.register(bench_subcommands)  # segcache bench replicas
