"""`segcache bench decode`: the cost of one decode token, alone and in a batched step, per weight format.

A quick companion of `segcache bench weights` (which also measures prefill and quality): each format
runs in its own process (segcache.bench.decode_probe), one after another, so no two measurements
share the cores. Figures per format:

    single stream   tokens/s of one sequence over `--steps` greedy decode steps (after a 32-token prompt)
    batched step    one `decode_batch` forward of `--batch` sequences (prompts of 32..47 tokens):
                    ms per step, aggregate tokens/s, and the per-row share (ms per step / batch)

Quantized formats run on the VNNI block kernels where they build (engine/native.py); `int4-torch` and
`int8-torch` are the same formats on torch's kernels (SEGCACHE_KERNELS=torch), for comparison.
`--threads` is the runner's thread count: a decode step's elementwise ops run on one thread either way,
the block kernels split their outputs over the threads.

When llama-cpp-python is importable, its single-stream decode on the same GGUF joins the table, on the
same thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import httpx

from segcache.bench import peers
from segcache.bench.markdown import replace_section

SECTION = "Decode cost per token"
FORMATS = (("bfloat16", "bf16"), ("bfloat16", "int8"), ("bfloat16", "int4"), ("bfloat16", "int8-torch"),
           ("bfloat16", "int4-torch"))


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("decode", help="decode tokens/s per weight format, alone and batched")
    parser.add_argument("--model", default="default", help="default | a .gguf file | a model folder")
    parser.add_argument("--steps", type=int, default=128, help="timed single-stream decode steps")
    parser.add_argument("--batch", type=int, default=16, help="rows of the batched decode step")
    parser.add_argument("--batch-steps", type=int, default=16, help="timed batched decode steps")
    parser.add_argument("--formats", default=",".join(w for _, w in FORMATS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=1, help="the runner's threads (and the peer's)")
    parser.add_argument("--no-peer", action="store_true", help="skip the peers even if installed")
    parser.add_argument("--llama-server", type=Path, default=peers.llama_server_path(),
                        help="llama.cpp's llama-server binary (scripts/setup-llama-server; default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    wanted = args.formats.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        rows = [probe(args, dtype, weights, Path(scratch) / f"{weights}.json") for dtype, weights in FORMATS
                if weights in wanted]
        args.peer_failure = None
        if not args.no_peer and importlib.util.find_spec("llama_cpp") is not None and args.model == "default":
            try:
                rows.append(probe(args, "q4_1", "llama-cpp-python", Path(scratch) / "peer.json"))
            except subprocess.CalledProcessError as exc:   # a broken peer build costs its row, not the run
                args.peer_failure = f"llama-cpp-python's probe failed ({exc.returncode}: {_signal_name(exc)})"
                print(args.peer_failure, file=sys.stderr)
        if not args.no_peer and args.llama_server and args.model == "default":
            rows.append(llama_server_figures(args))
    print("per CPU-second of the probe process:\n" + table(rows, "cpu"))
    print("per wall-clock second:\n" + table(rows, "wall"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(rows, args))
    return 0


def probe(args: argparse.Namespace, dtype: str, weights: str, out: Path) -> dict:
    print(f"measuring {dtype}/{weights} ...", file=sys.stderr, flush=True)
    fmt, kernels = (weights.removesuffix("-torch"), "torch") if weights.endswith("-torch") else (weights, None)
    env = {**os.environ, "SEGCACHE_KERNELS": kernels} if kernels else None
    subprocess.run([sys.executable, "-m", "segcache.bench.decode_probe", "--model", args.model, "--dtype", dtype,
                    "--weights", fmt, "--out", str(out), "--steps", str(args.steps), "--threads", str(args.threads),
                    "--batch", str(args.batch), "--batch-steps", str(args.batch_steps)], check=True, env=env)
    return json.loads(out.read_text())


def llama_server_figures(args: argparse.Namespace) -> dict:
    """llama.cpp's own server on the same GGUF and threads: its reported decode tokens/s over `--steps`
    tokens after the same 32-token prompt (its `timings.predicted_per_second`: wall clock, prompt excluded)."""
    from segcache.bench.weights_probe import held_text_ids
    from segcache.engine.model import load_tokenizer

    print(f"measuring llama-server ({args.llama_server}) ...", file=sys.stderr, flush=True)
    spec = replace(peers.LLAMA_SERVER, binary=str(args.llama_server))
    with tempfile.TemporaryDirectory() as log_dir:
        server = peers.start(spec, peers.PeerOptions(threads=args.threads), Path(log_dir))
        try:
            prompt = held_text_ids(load_tokenizer(args.model))[:32]
            rates = []
            for _ in range(2):     # the first run warms the server up; the second is reported
                reply = httpx.post(server.base_url.removesuffix("/v1") + "/completion", timeout=600, json={
                    "prompt": prompt, "n_predict": args.steps, "temperature": 0, "top_k": 1, "ignore_eos": True,
                    "cache_prompt": False}).json()
                rates.append(reply["timings"]["predicted_per_second"])
        finally:
            server.stop()
    return {"format": "llama-server", "dtype": "gguf-q4_1", "threads": args.threads,
            "single_tok_s": {"wall": rates[-1], "cpu": None}, "batch": None, "batch_step_ms": None}


def _signal_name(exc: subprocess.CalledProcessError) -> str:
    """'died with SIGILL' for a signal, else 'exit status N'."""
    if exc.returncode < 0:
        return f"died with {signal.Signals(-exc.returncode).name}"
    return f"exit status {exc.returncode}"


def table(rows: list[dict], clock: str = "cpu") -> str:
    """One row per format; `clock`: 'cpu' (tokens per CPU-second of the process) or 'wall'."""
    bf16 = next((r for r in rows if r["format"] == "bf16"), None)
    lines = [f"| format | single stream tok/s (x bf16) | batched step ms | batched tok/s (x single) "
             f"| per-row share (ms) |", "|---|---|---|---|---|"]
    for r in rows:
        rate = r["single_tok_s"][clock]
        if rate is None:      # a peer that reports only its own wall-clock rate
            lines.append(f"| {r['dtype']}/{r['format']} | - | - | - | - |")
            continue
        single = f"{rate:.1f}" + (f" ({rate / bf16['single_tok_s'][clock]:.2f}x)" if bf16 else "")
        if r.get("batch_step_ms") is None:
            lines.append(f"| {r['dtype']}/{r['format']} | {single} | - | - | - |")
            continue
        step_ms = r["batch_step_ms"][clock]
        batched = r["batch"] * 1000 / step_ms
        lines.append(f"| {r['dtype']}/{r['format']} | {single} | B={r['batch']}: {step_ms:.1f}"
                     f" | {batched:.1f} ({batched / rate:.2f}x) | {step_ms / r['batch']:.2f} |")
    return "\n".join(lines)


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    peer = (f"llama-cpp-python: the same GGUF through `Llama(n_threads={args.threads})`, tokens/s of its own "
            "decode loop"
            if any(r["format"] == "llama-cpp-python" for r in rows) else
            f"{getattr(args, 'peer_failure', None)}: no peer row in this run" if getattr(args, "peer_failure", None)
            else "llama-cpp-python is not installed here: no peer row in this run")
    if any(r["format"] == "llama-server" for r in rows):
        peer += (f". llama-server: llama.cpp's own server on the same GGUF, `-t {args.threads}`, the decode "
                 "tokens/s it reports itself (wall clock only). " + peers.LLAMA_SERVER_CAVEAT.removesuffix("."))
    return "\n\n".join([
        f"Each format in its own process, on the engine's runner (no HTTP), {args.threads} thread(s): single "
        f"stream = "
        f"{args.steps} greedy decode steps after a 32-token prompt; batched = {args.batch_steps} steps of one "
        f"forward over {args.batch} sequences (prompts of 32..{31 + args.batch} tokens). {peer}.",
        f"Command: `segcache bench decode --model {args.model} --steps {args.steps} --batch {args.batch} "
        f"--batch-steps {args.batch_steps} --threads {args.threads}`",
        "Tokens per CPU-second of the process (the steadier figure on a shared machine):", table(rows, "cpu"),
        "Tokens per wall-clock second:", table(rows, "wall")])
