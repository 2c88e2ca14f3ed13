"""One weight format's decode cost, measured in its own process: a single stream and one batched step.
The process's torch threads are one (a decode step's elementwise ops run on one thread in the server
too); `--threads` is the runner's count, which the block kernels use.
Run by `segcache bench decode`; prints nothing, writes a JSON file.

    python -m segcache.bench.decode_probe --dtype bfloat16 --weights int4 --out probe.json
    python -m segcache.bench.decode_probe --dtype q4_1 --weights llama-cpp-python --out peer.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from segcache.bench.weights_probe import held_text_ids
from segcache.engine.model import load_model, load_tokenizer
from segcache.engine.runner import Runner

PROMPT_TOKENS = 32
WARMUP_STEPS = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batch-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.weights == "llama-cpp-python":
        result = peer_figures(args)
    else:
        result = segcache_figures(args)
    Path(args.out).write_text(json.dumps(result))


def segcache_figures(args: argparse.Namespace) -> dict:
    loaded = load_model(args.model, args.dtype, weights=args.weights)
    runner = Runner(loaded, threads=args.threads)
    filler = held_text_ids(loaded.tokenizer) * 4
    kernels = "" if loaded.weights.kernels in ("dense", "vnni") else f"-{loaded.weights.kernels}"
    return {"format": loaded.weights.format + kernels, "dtype": loaded.dtype_name, "threads": args.threads,
            "single_tok_s": single_stream(runner, filler[:PROMPT_TOKENS], args.steps),
            "batch": args.batch, "batch_step_ms": batched_step_ms(runner, filler, args.batch, args.batch_steps)}


def single_stream(runner: Runner, prompt_ids: list[int], steps: int) -> float:
    """Tokens/s of greedy decode steps of one sequence (the argmax included, as a server does it)."""
    state = runner.start([], len(prompt_ids) + WARMUP_STEPS + steps + 1)
    runner.prefill_part(state, tuple(prompt_ids))
    token = int(state.last_logits.argmax())
    for _ in range(WARMUP_STEPS):
        token = int(runner.decode_step(state, token).argmax())
    with Clock() as clock:
        for _ in range(steps):
            token = int(runner.decode_step(state, token).argmax())
    return clock.rates(steps)


def batched_step_ms(runner: Runner, filler: list[int], batch: int, steps: int) -> float:
    """Milliseconds per `decode_batch` step of `batch` sequences, each at its own context length."""
    states = []
    for row in range(batch):
        prompt = tuple(filler[row:row + PROMPT_TOKENS + row])
        state = runner.start([], len(prompt) + WARMUP_STEPS + steps + 1)
        runner.prefill_part(state, prompt)
        states.append(state)
    tokens = [int(s.last_logits.argmax()) for s in states]
    for _ in range(WARMUP_STEPS):
        tokens = [int(row.argmax()) for row in runner.decode_batch(states, tokens)]
    with Clock() as clock:
        for _ in range(steps):
            tokens = [int(row.argmax()) for row in runner.decode_batch(states, tokens)]
    return clock.step_ms(steps)


class Clock:
    """Wall time and this process's CPU time of a block. On a shared machine the CPU time of a
    one-thread loop is the steadier figure: it leaves out the time other processes held the core."""

    def start(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def rates(self, count: int) -> dict:
        return {"wall": count / self.wall, "cpu": count / self.cpu}

    def step_ms(self, count: int) -> dict:
        return {"wall": self.wall * 1000 / count, "cpu": self.cpu * 1000 / count}


def peer_figures(args: argparse.Namespace) -> dict:
    """llama-cpp-python on the embedded GGUF, one thread, greedy: tokens/s after the first token."""
    from llama_cpp import Llama

    from segcache.engine.model import embedded_gguf_path

    ids = held_text_ids(load_tokenizer(args.model))[:PROMPT_TOKENS]
    llm = Llama(model_path=str(embedded_gguf_path()), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=512, verbose=False)
    generated, clock = 0, Clock()
    for _ in llm.generate(ids, temp=0.0, top_k=1):
        generated += 1
        if generated == WARMUP_STEPS:
            clock.start()
        if generated == WARMUP_STEPS + args.steps:
            clock.stop()
            break
    return {"format": "llama-cpp-python", "dtype": "gguf-q4_1", "single_tok_s": clock.rates(args.steps),
            "batch": None, "batch_step_ms": None}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
