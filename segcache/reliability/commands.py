"""CLI subcommands of segcache.reliability: `segcache load` and `segcache audit`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import httpx

from segcache.reliability.target import Target, generated_keys, parse_keys, spawned_server


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets args.run to a function(args) -> exit code."""
    load = commands.add_parser(
        "load", help="concurrent multi-tenant load run (or --bad-inputs) against a loopback server",
        description="N clients across tenants send a realistic mix (shared segments, varying messages, hash-only "
                    "and named references, streams, warms, deliberate 4xx) until the deadline or request cap; "
                    "reports errors, latency percentiles, peak KV bytes vs budget, and the server's tree check.")
    _target_flags(load, cache_bytes="32MiB")
    load.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    load.add_argument("--tenants", type=int, default=3, help="tenants when keys are generated for --spawn (default: 3)")
    load.add_argument("--duration", type=float, default=120, help="seconds to send for (default: 120)")
    load.add_argument("--max-requests", type=int, default=5000, help="cap on requests, all clients (default: 5000)")
    load.add_argument("--max-tokens", type=int, default=8, help="completion tokens per request (default: 8)")
    load.add_argument("--keys", help="key:tenant,... the clients use (with --spawn also the server's keys)")
    load.add_argument("--pin-bytes-per-tenant", default="64KiB",
                      help="with --spawn: the server's pin quota, small so a pin can exceed it (default: 64KiB)")
    load.add_argument("--no-clears", action="store_true",
                      help="leave DELETE /v1/cache (clients clearing their tenant's cache mid-run) out of the mix")
    load.add_argument("--bad-inputs", action="store_true",
                      help="instead of the load run, send each kind of bad request once and print the table")
    load.add_argument("--noisy-neighbour", action="store_true",
                      help="instead of the load run: tenant A reads its warmed segments while tenant B floods at "
                           "10x its rate; with --spawn, once with tenant shares and once with one LRU")
    load.add_argument("--rounds", type=int, default=30, help="with --noisy-neighbour: A's requests (default: 30)")
    load.set_defaults(run=run_load_command)

    audit = commands.add_parser(
        "audit", help="timing audit: can another key tell from TTFT that a prompt is cached?",
        description="After Gu et al., 'Auditing Prompt Caching in Language Model APIs' (ICML 2025): TTFT of a "
                    "cache-hit procedure vs a cache-miss procedure, compared with a two-sample KS test, for an "
                    "attacker key in the victim's tenant and one in another tenant.")
    _target_flags(audit, cache_bytes="512MiB")
    audit.add_argument("--keys", nargs=3, metavar=("VICTIM", "SAME_TENANT", "OTHER_TENANT"),
                       help="three API keys: the victim's, another key of its tenant, a key of another tenant")
    audit.add_argument("--samples", type=int, default=40, help="samples per procedure and setting (default: 40)")
    audit.add_argument("--prefix-words", type=int, default=250, help="random words per prefix (default: 250)")
    audit.add_argument("--max-tokens", type=int, default=2, help="completion tokens per request (default: 2)")
    audit.add_argument("--alpha", type=float, default=0.01, help="significance level (default: 0.01)")
    audit.add_argument("--seed", type=int, help="seed for the prefixes (default: fresh randomness)")
    audit.set_defaults(run=run_audit_command)


def _target_flags(parser: argparse.ArgumentParser, cache_bytes: str) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    where.add_argument("--spawn", action="store_true", help="start `segcache serve` on a free loopback port")
    parser.add_argument("--model", default="default", help="with --spawn: the model to serve (default: default)")
    parser.add_argument("--cache-bytes", default=cache_bytes, help=f"with --spawn: KV budget (default: {cache_bytes})")
    parser.add_argument("--server-log", help="with --spawn: write the server's output to this file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


@contextlib.contextmanager
def _target(args: argparse.Namespace, keys: dict[str, str], extra_flags: tuple[str, ...] = ()):
    if not args.spawn:
        yield Target(args.url, keys)
        return
    with spawned_server(keys, args.model, args.cache_bytes, extra_flags, log_path=args.server_log) as target:
        yield target


def run_noisy_command(args: argparse.Namespace) -> int:
    from segcache.reliability.noisy import NoisyConfig, as_text, run_noisy

    try:
        config = NoisyConfig(rounds=args.rounds)
        keys = parse_keys(args.keys) or generated_keys(["tenant-a", "tenant-b"], keys_per_tenant=1)
        modes = [("shares", "auto"), ("one LRU", "off")] if args.spawn else [("this server", None)]
        results = []
        for label, share in modes:
            flags = ("--pin-bytes-per-tenant", args.pin_bytes_per_tenant) + (
                ("--tenant-cache-share", share) if share else ())
            with _target(args, keys, flags) as target:
                results.append(run_noisy(target, config, label))
    except (ValueError, RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        print(f"segcache load --noisy-neighbour: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"label": r.label, "hit_rates": r.hit_rates, "overall": r.overall,
                           "flood_statuses": r.flood_statuses, "peak_bytes": r.peak_bytes,
                           "capacity_bytes": r.capacity_bytes, "checks_clean": r.checks_clean} for r in results],
                         indent=2))
    else:
        print(as_text(results, config))
    return 0 if all(r.checks_clean and r.peak_bytes <= r.capacity_bytes for r in results) else 1


def run_load_command(args: argparse.Namespace) -> int:
    from segcache.reliability.bad_inputs import LIMIT_FLAGS, markdown_table, run_bad_inputs
    from segcache.reliability.load import LoadConfig, run_load

    if args.noisy_neighbour:
        return run_noisy_command(args)
    try:
        keys = parse_keys(args.keys)
        if args.spawn and not keys:
            keys = generated_keys([f"tenant-{i}" for i in range(args.tenants)], keys_per_tenant=2)
        config = LoadConfig(clients=args.clients, duration_s=args.duration, max_requests=args.max_requests,
                            max_tokens=args.max_tokens, clear_cache=not args.no_clears)
        flags = ("--pin-bytes-per-tenant", args.pin_bytes_per_tenant)
        if args.bad_inputs:
            flags += tuple(str(part) for item in LIMIT_FLAGS.items() for part in item)
        with _target(args, keys, flags) as target:
            if args.bad_inputs:
                rows, after = run_bad_inputs(target)
            else:
                report = run_load(target, config)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        print(f"segcache load: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:   # the server went away mid-run: say so, no traceback
        print(f"segcache load: the server stopped answering ({type(exc).__name__}: {exc}); "
              "see its log (--server-log with --spawn)", file=sys.stderr)
        return 2
    if args.bad_inputs:
        if args.json:
            print(json.dumps({"rows": [{"input": r.case.what, "method": r.case.method, "path": r.case.path,
                                        "key": r.case.key, "expected_status": list(r.case.expect_status),
                                        "expected_code": r.case.expect_code, "status": r.status, "code": r.code,
                                        "message": r.message, "as_expected": r.as_expected} for r in rows],
                              "after": after}, indent=2))
        else:
            print(markdown_table(rows) + "\n\n" + "\n".join(f"- {line}" for line in after))
        return 0 if all(r.as_expected for r in rows) else 1
    print(json.dumps(report.summary(), indent=2) if args.json else report.as_text())
    return 0 if report.passed else 1


def run_audit_command(args: argparse.Namespace) -> int:
    from segcache.reliability.audit import AuditConfig, AuditKeys, as_text, run_audit

    try:
        if args.spawn:
            victim, same, other = (args.keys or list(generated_keys(["victim-org"], 2)) +
                                   list(generated_keys(["attacker-org"], 1)))
            keys = {victim: "victim-org", same: "victim-org", other: "attacker-org"}
        elif not args.keys:
            raise ValueError("--url needs --keys VICTIM SAME_TENANT OTHER_TENANT")
        else:
            victim, same, other = args.keys
            keys = {}
        config = AuditConfig(samples=args.samples, prefix_words=args.prefix_words, max_tokens=args.max_tokens,
                             alpha=args.alpha, seed=args.seed)
        with _target(args, keys) as target:
            report = run_audit(target.url, AuditKeys(victim, same, other), config)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        print(f"segcache audit: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else as_text(report))
    return 0 if report["passed"] else 1
