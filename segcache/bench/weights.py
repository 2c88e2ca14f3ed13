"""`segcache bench weights`: speed, quality and memory of each weight format on the default model.

Each format runs in its own process (segcache.bench.weights_probe), so each peak RSS is that format's
own; all of them are loaded at once and their timed runs interleave (one at a time, the order rotating
each round), so a busy spell on this shared machine falls on every format alike instead of on whichever
ran then: the speed ratios are of one run, as a comparison should be. Quality is against float32 dense:
greedy agreement of the first 32 answer tokens on a fixed set of 50 prompts, and the mean KL
divergence KL(float32 || format) of next-token distributions over a held 256-token text.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from segcache.bench.markdown import replace_section

SECTION = "Weight formats"
PREFILL_LENGTHS = (64, 512, 2000)
ANSWER_TOKENS = 32
REFERENCE = ("float32", "float32")
FORMATS = (REFERENCE, ("bfloat16", "bf16"), ("bfloat16", "int8"), ("bfloat16", "int4"))


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("weights", help="decode/prefill speed, quality and RSS per weight format")
    parser.add_argument("--model", default="default", help="default | a .gguf file | a model folder")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of timed runs (median)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        probes = [Probe(args.model, dtype, weights) for dtype, weights in FORMATS]
        try:
            results = measure(probes, args.repeats, Path(scratch))
        finally:
            for p in probes:
                p.close()
    reference = results[0]
    rows = [summarize(r, reference) for r in results]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(rows, args))
    return 0


class Probe:
    """One format's probe process, spoken to one JSON line at a time (segcache.bench.weights_probe)."""

    def __init__(self, model: str, dtype: str, weights: str):
        self.name = f"{dtype}/{weights}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "segcache.bench.weights_probe", "--model", model, "--dtype", dtype,
             "--weights", weights], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.loaded: dict = {}

    def wait_loaded(self) -> None:
        self.loaded = self._read()

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} probe exited with status {self.process.wait()} (its stderr is above)")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def rotations(count: int, rounds: int) -> list[list[int]]:
    """The order of the formats in each round: every format takes every position equally often."""
    return [[(r + i) % count for i in range(count)] for r in range(rounds)]


def measure(probes: list[Probe], repeats: int, scratch: Path) -> list[dict]:
    for p in probes:
        print(f"loading {p.name} ...", file=sys.stderr, flush=True)
        p.wait_loaded()                                    # all loaded before any timing starts
    prefill = [{n: [] for n in PREFILL_LENGTHS} for _ in probes]
    decode: list[list[float]] = [[] for _ in probes]
    for order in rotations(len(probes), repeats):
        print("timing " + ", ".join(probes[i].name for i in order) + " ...", file=sys.stderr, flush=True)
        for n in PREFILL_LENGTHS:
            for i in order:
                prefill[i][n].append(probes[i].ask(op="prefill", tokens=n)["seconds"])
        for i in order:
            decode[i].append(probes[i].ask(op="decode")["tok_s"])
    import torch

    results = []
    for i, p in enumerate(probes):
        print(f"quality of {p.name} ...", file=sys.stderr, flush=True)
        out = scratch / f"{i}.pt"
        p.ask(op="finish", out=str(out))
        results.append({**torch.load(out), "format": p.loaded["format"], "dtype": p.loaded["dtype"],
                        "decode_tok_s": statistics.median(decode[i]),
                        "prefill_tok_s": {n: n / statistics.median(prefill[i][n]) for n in PREFILL_LENGTHS}})
    return results


def summarize(result: dict, reference: dict) -> dict:
    agreeing = [_common_prefix(a, b) for a, b in zip(result["answers"], reference["answers"])]
    ref_logprobs, logprobs = reference["held_logprobs"], result["held_logprobs"]
    kl = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum(-1).mean().item()
    return {"format": result["format"], "dtype": result["dtype"], "decode_tok_s": result["decode_tok_s"],
            "prefill_tok_s": result["prefill_tok_s"], "identical_answers": sum(n == ANSWER_TOKENS for n in agreeing),
            "num_prompts": len(agreeing), "mean_agreeing_tokens": sum(agreeing) / len(agreeing),
            "mean_kl": kl, "peak_rss_mib": result["peak_rss_mib"]}


def table(rows: list[dict]) -> str:
    bf16 = next(r for r in rows if r["format"] == "bf16")
    head = ("| format | decode tok/s (x bf16) | " + " | ".join(f"prefill {n} tok/s (x bf16)" for n in PREFILL_LENGTHS)
            + f" | identical first {ANSWER_TOKENS} tokens | mean agreeing tokens | mean KL vs float32"
            + " | peak RSS (MiB) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speeds, base = r["prefill_tok_s"], bf16["prefill_tok_s"]
        prefill = " | ".join(f"{speeds[n]:.0f} ({speeds[n] / base[n]:.2f}x)" for n in PREFILL_LENGTHS)
        decode = f"{r['decode_tok_s']:.1f} ({r['decode_tok_s'] / bf16['decode_tok_s']:.2f}x)"
        lines.append(f"| {r['dtype']}/{r['format']} | {decode}"
                     f" | {prefill} | {r['identical_answers']}/{r['num_prompts']} | {r['mean_agreeing_tokens']:.1f}"
                     f" | {r['mean_kl']:.5f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    from segcache.engine.linear import KERNEL_MAX_ROWS   # (torch: not at the import of every bench command)

    peer = ("llama-cpp-python is installed but not run by this command" if importlib.util.find_spec("llama_cpp")
            else "llama-cpp-python is not installed here: no peer row in this run")
    return "\n\n".join([
        "Each format in its own process, all loaded at once, their timed runs interleaved (the order "
        "rotating each round), on the engine's runner (no HTTP): decode = tokens/s of a single stream over "
        f"128 greedy steps (median of {args.repeats}); prefill = one cold part of 64/512/2000 tokens "
        f"(median of {args.repeats}); forwards of more than {KERNEL_MAX_ROWS} rows run on the dense bfloat16 "
        "weight in every format, so the prefill columns of bf16, int8 and int4 time the same arithmetic and "
        "differ by noise only; quality vs float32 dense over 50 fixed prompts (greedy, first "
        f"{ANSWER_TOKENS} answer tokens) and KL of next-token distributions over a held 256-token text, "
        f"fed token by token (the decode path). {peer}.",
        f"Command: `segcache bench weights --model {args.model} --repeats {args.repeats}`",
        table(rows)])


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count
