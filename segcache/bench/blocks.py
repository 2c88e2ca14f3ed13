"""Block-level reuse figures, in the engine: `python -m segcache.bench.blocks [--dtype auto] [--repeats 3]`.

Prints one table, a row per --block-tokens and --prefill-span-tokens (plus the reference: 512-token
blocks, one forward each):
- cold prefill of a 2,000-token prompt (the cost of cutting parts into blocks);
- the share of prompt tokens cached for an opencode-like request (a 2,000-token system message whose
  last line changed) and for a repeated 2,000-token /v1/completions prompt, per --block-tokens;
- the tree's bookkeeping bytes per block node (Python objects, payload excluded) next to its KV bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tracemalloc

from segcache.cache.keys import block_key, part_key, scope_key
from segcache.cache.node import PartSpec
from segcache.cache.tree import SegmentTree
from segcache.config import ServeConfig
from segcache.engine.engine import Engine
from segcache.engine.model import load_model
from segcache.engine.request import EngineRequest, SamplingParams
from segcache.engine.runner import kv_bytes_per_token

LINE = "- Tool {i}: read the file, check the tests in tests/unit/test_{i}.py, and keep the diff small.\n"


def system_message(tokenizer, num_tokens: int, last_line: str) -> str:
    text, i = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < num_tokens:
        text += LINE.format(i=i)
        i += 1
    return text + last_line


def chat(tenant: str, system: str) -> EngineRequest:
    messages = ({"role": "system", "content": system}, {"role": "user", "content": "Fix the failing test."})
    return EngineRequest(tenant, "chat", (), messages, sampling=SamplingParams(max_tokens=1, temperature=0))


def completion(tenant: str, prompt: str) -> EngineRequest:
    return EngineRequest(tenant, "completion", (), prompt=prompt, sampling=SamplingParams(max_tokens=1, temperature=0))


def first_report(engine: Engine, request: EngineRequest):
    return engine.run(request)[0]


def cold_prefill(engine: Engine, system: str, repeats: int) -> float:
    first_report(engine, chat("warm-up", system))   # the first forwards of a process are slower
    return statistics.median(first_report(engine, chat(f"cold-{i}", system)).prefill_s for i in range(repeats))


def reuse(engine: Engine, system: str, changed: str, prompt: str) -> tuple[str, str]:
    first_report(engine, chat("opencode", system))
    agent = first_report(engine, chat("opencode", changed))
    first_report(engine, completion("completion", prompt))
    again = first_report(engine, completion("completion", prompt))
    return (f"{agent.cached_tokens}/{agent.prompt_tokens} ({agent.cached_tokens / agent.prompt_tokens:.1%})",
            f"{again.cached_tokens}/{again.prompt_tokens} ({again.cached_tokens / again.prompt_tokens:.1%})")


def bookkeeping_bytes(block_tokens: int, num_nodes: int = 2000) -> tuple[int, int]:
    """Bytes per block node held by the tree (node, its dicts, keys, token tuple), payload excluded:
    (with the token tuple, without it)."""
    tree = SegmentTree(1 << 40)
    scope = scope_key("t", "m", "w", "float32", "tok")
    specs = [PartSpec(block_key("segment", "system"), tuple(range(i, i + block_tokens)), "s",
                      part_key("segment", "system", str(i))) for i in range(num_nodes)]
    token_bytes = sum(sys.getsizeof(s.token_ids) + sum(sys.getsizeof(t) for t in s.token_ids if t > 256)
                      for s in specs) // num_nodes
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    parent = tree.root(scope)
    for spec in specs:
        parent = tree.insert(parent, spec, payload=None, num_bytes=1)
    used = (tracemalloc.get_traced_memory()[0] - before) // num_nodes
    tracemalloc.stop()
    return used + token_bytes, used


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", default="64,128,256", help="--block-tokens values to compare")
    parser.add_argument("--spans", default="512", help="--prefill-span-tokens values to compare (0: a forward per block)")
    args = parser.parse_args(argv)
    loaded = load_model("default", args.dtype)
    system = system_message(loaded.tokenizer, 2000, "Working directory: /home/me/project-one\n")
    changed = system.replace("project-one", "project-two")
    prompt = system_message(loaded.tokenizer, 2000, "")
    kv_per_token = kv_bytes_per_token(loaded)
    print(f"model default, dtype {loaded.dtype}, {args.repeats} cold samples per row (median)\n")
    print("| --block-tokens | --prefill-span-tokens | cold prefill, 2,000-token chat (s) | opencode-like: cached "
          "| repeated completion: cached | node bookkeeping bytes (with token ids / without) | KV bytes per block |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(512, 0)] + [(int(b), int(s)) for b in args.blocks.split(",") for s in args.spans.split(",")]
    for block_tokens, span_tokens in rows:
        config = ServeConfig(model="default", dtype=args.dtype, block_tokens=block_tokens,
                             prefill_span_tokens=span_tokens, idle_prefill_span_tokens=span_tokens)
        engine = Engine(config, loaded=loaded)
        try:
            cold = cold_prefill(engine, system, args.repeats)
            agent, repeated = reuse(engine, system, changed, prompt)
        finally:
            engine.close()
        with_tokens, without = bookkeeping_bytes(block_tokens)
        print(f"| {block_tokens} | {span_tokens} | {cold:.3f} | {agent} | {repeated} | {with_tokens} / {without} "
              f"| {block_tokens * kv_per_token} |", flush=True)


if __name__ == "__main__":
    main()
