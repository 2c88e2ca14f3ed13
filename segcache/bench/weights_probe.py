"""One weight format in its own process (so its peak RSS is its own), driven by `segcache bench weights`
over a pipe so that the formats' timed runs interleave: the parent sends one JSON command per line,
the probe answers each with one JSON line.

    {"op": "prefill", "tokens": 512}   -> {"seconds": ...}    one cold part of that many tokens
    {"op": "decode"}                   -> {"tok_s": ...}      a single stream, 128 greedy steps
    {"op": "finish", "out": "p.pt"}    -> {"done": true}      quality figures and peak RSS, written there

It answers {"ready": true, ...} once the model is loaded. Everything else it prints goes to stderr.

    python -m segcache.bench.weights_probe --dtype bfloat16 --weights int4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from segcache.bench import corpus
from segcache.bench.weights import ANSWER_TOKENS
from segcache.engine.model import load_model
from segcache.engine.runner import Runner

DECODE_TOKENS = 128
HELD_TOKENS = 256
SUBJECTS = ("a hash table", "a binary search", "TCP", "DNS", "a mutex", "garbage collection", "a compiler",
            "an operating system", "a CPU cache", "recursion", "a linked list", "HTTP caching", "a B-tree",
            "public-key cryptography", "a unit test", "version control", "a REST API", "a database index",
            "floating point rounding", "a virtual machine", "a load balancer", "JSON", "a regular expression",
            "a thread pool", "an SSD")
TEMPLATES = ("Explain {} in one sentence.", "Give one practical tip about {}.")


def prompts() -> list[str]:
    """The fixed quality set: 25 subjects x 2 questions = 50 prompts."""
    return [template.format(subject) for subject in SUBJECTS for template in TEMPLATES]


def held_text_ids(tokenizer) -> list[int]:
    text = "\n\n".join(corpus.reference_docs(("json", "pathlib")))
    return tokenizer(text, add_special_tokens=False)["input_ids"][:HELD_TOKENS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", required=True)
    parser.add_argument("--weights", required=True)
    args = parser.parse_args()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr                              # the pipe carries replies only
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model(args.model, args.dtype, weights=args.weights)
    runner = Runner(loaded, threads=torch.get_num_threads())
    filler = held_text_ids(loaded.tokenizer) * 10

    def reply(**fields) -> None:
        replies.write(json.dumps(fields) + "\n")
        replies.flush()

    reply(ready=True, format=loaded.weights.format, dtype=loaded.dtype_name)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "prefill":
            reply(seconds=prefill_seconds(runner, filler[:command["tokens"]]))
        elif command["op"] == "decode":
            reply(tok_s=decode_speed(runner, filler[:32]))
        elif command["op"] == "finish":
            torch.save({"answers": [greedy(runner, loaded.tokenizer, p) for p in prompts()],
                        "held_logprobs": held_logprobs(runner, held_text_ids(loaded.tokenizer)),
                        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, command["out"])
            reply(done=True)
            return
        else:
            raise SystemExit(f"weights_probe: unknown command {command!r}")


def decode_speed(runner: Runner, prompt_ids: list[int]) -> float:
    state = runner.start([], len(prompt_ids) + DECODE_TOKENS + 1)
    runner.prefill_part(state, tuple(prompt_ids))
    token = int(state.last_logits.argmax())
    started = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        token = int(runner.decode_step(state, token).argmax())
    return DECODE_TOKENS / (time.perf_counter() - started)


def prefill_seconds(runner: Runner, ids: list[int]) -> float:
    state = runner.start([], len(ids))
    started = time.perf_counter()
    runner.prefill_part(state, tuple(ids))
    return time.perf_counter() - started


def greedy(runner: Runner, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    state = runner.start([], len(ids) + ANSWER_TOKENS)
    runner.prefill_part(state, tuple(ids))
    tokens = [int(state.last_logits.argmax())]
    while len(tokens) < ANSWER_TOKENS:
        tokens.append(int(runner.decode_step(state, tokens[-1]).argmax()))
    return tokens


def held_logprobs(runner: Runner, ids: list[int]) -> torch.Tensor:
    """Log-probabilities of the next token at each position of the held text, fed one token at a time
    (the decode path, where the integer kernels run): (positions, vocab) float32."""
    state = runner.start([], len(ids))
    rows = [torch.log_softmax(runner.decode_step(state, token).float(), dim=-1) for token in ids[:-1]]
    return torch.stack(rows)


if __name__ == "__main__":
    main()
