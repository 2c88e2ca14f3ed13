"""CLI subcommands of segcache.trace."""

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets args.run to a function(args) -> exit code."""
