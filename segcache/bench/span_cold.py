"""Cold prefill per block and span size, interleaved: `python -m segcache.bench.span_cold [--threads 1] [--rounds 3]`.

Each round runs the 2,000-token chat of bench/blocks.py once per configuration (a new tenant each time, so
nothing is cached) and records the CPU seconds of the process: on one thread that is the work done, and it
is less disturbed by other processes than wall time on a shared machine. Prints min / median per row and the
ratio to the first row (512-token blocks, one forward each: the pre-block engine's forwards).
"""

from __future__ import annotations

import argparse
import statistics
import time

from segcache.bench.blocks import chat, first_report, system_message
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.model import load_model

ROWS = ((512, 0), (64, 512), (128, 512), (64, 0))   # (--block-tokens, --prefill-span-tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    loaded = load_model("default", "auto")
    system = system_message(loaded.tokenizer, 2000, "Working directory: /home/me/project-one\n")
    engines = {row: Engine(ServeConfig(model="default", block_tokens=row[0], prefill_span_tokens=row[1],
                                       idle_prefill_span_tokens=row[1],
                                       threads=args.threads), loaded=loaded) for row in ROWS}
    seconds: dict[tuple[int, int], list[float]] = {row: [] for row in ROWS}
    try:
        for row in ROWS:
            first_report(engines[row], chat("warm-up", system))
        for round_index in range(args.rounds):
            for row in ROWS:
                started = time.process_time()
                first_report(engines[row], chat(f"cold-{round_index}", system))
                seconds[row].append(time.process_time() - started)
    finally:
        for engine in engines.values():
            engine.close()
    reference = min(seconds[ROWS[0]])
    print(f"| --block-tokens | --prefill-span-tokens | CPU s, min / median of {args.rounds} ({args.threads} thread) | vs first row |")
    print("|---:|---:|---:|---:|")
    for row in ROWS:
        print(f"| {row[0]} | {row[1]} | {min(seconds[row]):.2f} / {statistics.median(seconds[row]):.2f} "
              f"| {min(seconds[row]) / reference:.2f}x |")


if __name__ == "__main__":
    main()
