"""`segcache bench constrained`: what a grammar costs per token, and whether forced tool calls validate.

Decode rate: the same server, the same max_tokens, greedy; a free-text reply against a reply held
to a JSON schema (tokens / the server's own decode_s, medians over repeats). Validity: `prompts`
requests with `tool_choice: "required"` over three tools, each call's arguments checked against its
tool's schema with jsonschema.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import httpx

from segcache.bench import peers
from segcache.bench.markdown import replace_section

SECTION = "Constrained decoding"
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
FACTS = [{"role": "user", "content": "List many facts about the sea as JSON."}]
FACTS_SCHEMA = {"type": "object", "properties": {"facts": {"type": "array", "items": {"type": "string"}, "minItems": 8}},
                "required": ["facts"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in an IANA timezone",
                                      "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                                                     "required": ["timezone"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert an amount of money",
                                      "parameters": {"type": "object", "properties": {
                                          "amount": {"type": "number", "minimum": 0},
                                          "from": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                          "to": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                                          "required": ["amount", "from", "to"]}}},
]
CITIES = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Seoul", "Accra"]
ASKS = ["What is the weather in {city}?", "What time is it in {city} right now?",
        "How much is 120 euros in the currency of {city}?", "Is it raining in {city}?",
        "I am flying to {city}; should I pack a coat?"]


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("constrained", help="decode rate with and without a JSON schema; forced tool-call validity")
    parser.add_argument("--model", default="default", help="default | tiny | a local model path")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each rate sample")
    parser.add_argument("--repeats", type=int, default=3, help="rate samples of each kind (median reported)")
    parser.add_argument("--prompts", type=int, default=50, help="forced tool calls to validate")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = peers.PeerOptions(model=args.model, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as logs:
        server = peers.start(peers.SYSTEMS["segcache"], options, Path(logs))
        try:
            with httpx.Client(base_url=server.base_url, timeout=600) as http:
                model = http.get("/models").json()["data"][0]["id"]
                free = decode_rates(http, model, {"messages": STORY}, args)
                schema = decode_rates(http, model, {"messages": FACTS, "response_format": {
                    "type": "json_schema", "json_schema": {"name": "facts", "schema": FACTS_SCHEMA}}}, args)
                calls = tool_calls(http, model, args.prompts)
        finally:
            server.stop()
    figures = {"model": args.model, "dtype": args.dtype, "tokens": args.tokens, "repeats": args.repeats,
               "prompts": args.prompts, "free": free, "schema": schema, "calls": calls}
    print(table(figures))
    for failure in calls["failures"]:
        print("invalid call:", json.dumps(failure, ensure_ascii=False)[:400])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(figures))
    return 0


def decode_rates(http: httpx.Client, model: str, body: dict, args) -> dict:
    rates, tokens = [], []
    for _ in range(args.repeats + 1):       # the first warms the prompt's cache (and the grammar index)
        reply = http.post("/chat/completions", json={"model": model, "max_tokens": args.tokens, "temperature": 0,
                                                     **body}).raise_for_status().json()
        count = reply["usage"]["completion_tokens"]
        rates.append(count / reply["timings"]["decode_s"])
        tokens.append(count)
    return {"tokens_per_s": statistics.median(rates[1:]), "completion_tokens": statistics.median(tokens[1:])}


def tool_calls(http: httpx.Client, model: str, num_prompts: int) -> dict:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    prompts = [ask.format(city=city) for city in CITIES for ask in ASKS][:num_prompts]
    valid, names, failures = 0, [], []
    for prompt in prompts:
        reply = http.post("/chat/completions", json={
            "model": model, "max_tokens": 160, "temperature": 0, "tools": TOOLS, "tool_choice": "required",
            "messages": [{"role": "user", "content": prompt}]}).raise_for_status().json()
        choice = reply["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        names += [call["function"]["name"] for call in calls]
        problem = _problem(calls, schemas)
        if problem is None:
            valid += 1
        else:
            failures.append({"prompt": prompt, "finish_reason": choice["finish_reason"], "problem": problem,
                             "content": choice["message"].get("content")})
    return {"valid": valid, "prompts": len(prompts), "by_tool": {n: names.count(n) for n in sorted(set(names))},
            "failures": failures}


def _problem(calls: list[dict], schemas: dict) -> str | None:
    """Why a reply does not hold exactly one call with valid arguments (None when it does)."""
    import jsonschema

    if len(calls) != 1:
        return f"{len(calls)} calls"
    function = calls[0]["function"]
    try:
        jsonschema.validate(json.loads(function["arguments"]), schemas[function["name"]])
    except (jsonschema.ValidationError, json.JSONDecodeError) as exc:
        return str(exc).splitlines()[0]
    return None


def rows(f: dict) -> list[tuple[str, str, str]]:
    free, schema, calls = f["free"]["tokens_per_s"], f["schema"]["tokens_per_s"], f["calls"]
    overhead = 1 - schema / free
    share = calls["valid"] / calls["prompts"]
    return [
        ("decode, free text", f"{free:.1f} tok/s", f"{f['free']['completion_tokens']:.0f} tokens per reply"),
        ("decode, json_schema", f"{schema:.1f} tok/s", f"{f['schema']['completion_tokens']:.0f} tokens per reply"),
        ("grammar overhead", f"{overhead:.1%}", f"goal: under 10%, {'met' if overhead < 0.10 else 'not met'}"),
        ('tool_choice "required" calls that validate', f"{calls['valid']}/{calls['prompts']}",
         f"goal: 100%, {'met' if share == 1 else 'not met'}; calls per tool {calls['by_tool']}"),
    ]


def table(f: dict) -> str:
    width = max(len(r[0]) for r in rows(f))
    return "\n".join(f"{name:<{width}}  {value:>12}  {note}" for name, value, note in rows(f))


def markdown(f: dict) -> str:
    command = (f"segcache bench constrained --model {f['model']} --dtype {f['dtype']} --tokens {f['tokens']} "
               f"--repeats {f['repeats']} --prompts {f['prompts']}")
    lines = ["Greedy decode through the HTTP API, one server: free text against a reply held to a JSON schema "
             "(llguidance), tokens over the server's decode_s, medians; then forced tool calls over three tools, "
             "arguments checked with jsonschema. A 2-core CPU that other work shares (ratios matter more than times).",
             "", f"Command: `{command}`", "", "| figure | value | note |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows(f)]
    return "\n".join(lines)
