"""`segcache load --bad-inputs`: send each kind of bad request once and tabulate what came back.

The table in RELIABILITY.md is this module's output, not a hand-written list: every row is a
request that was actually sent, with the status and error code the server actually answered.
After the bad requests, a normal request must still succeed and the tree must still check clean.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import httpx

from segcache.cache.keys import segment_hash
from segcache.reliability.load import served_model
from segcache.reliability.server_state import check_tree
from segcache.reliability.target import Target, headers
from segcache.reliability.words import random_words

PROBE_NAME = "isolation-probe"
# The work limits a spawned server runs with (small, so each is cheap to pass); a --url server is
# assumed to run with the same flags.
LIMIT_FLAGS = {"--max-body-bytes": 1 << 20, "--max-prompt-chars": 200_000, "--max-messages": 256,
               "--max-stop-bytes": 256, "--max-registry-bytes": 64 << 10}


@dataclass(frozen=True)
class BadInput:
    what: str                     # the mistake, in words
    method: str
    path: str
    expect_status: tuple[int, ...]        # any of these is right
    expect_code: str | None       # None: any error code
    body: object = None           # sent as JSON
    raw: bytes | None = None      # sent as-is instead of `body`
    key: str = "own"              # own | other (another tenant's key) | wrong | none


@dataclass(frozen=True)
class Row:
    case: BadInput
    status: int
    code: str | None
    message: str

    @property
    def as_expected(self) -> bool:
        code_ok = self.case.expect_code is None or self.code == self.case.expect_code
        return self.status in self.case.expect_status and code_ok


def cases(model: str, context_tokens: int, probe: str, other_tenant: bool) -> list[BadInput]:
    """Every bad input, given the served model, its context length and a segment the own tenant sent."""
    ask = {"role": "user", "content": "hi"}

    def chat(what: str, status: int, code: str, key: str = "own", **change) -> BadInput:
        return BadInput(what, "POST", "/v1/chat/completions", (status,), code,
                        {"model": model, "max_tokens": 2, "messages": [ask], **change}, key=key)

    rows = [
        chat("hash does not match content", 400, "segment_hash_mismatch",
             segments=[{"id": "x", "hash": segment_hash(probe + "!"), "content": probe}]),
        chat("unknown hash, no content", 400, "segment_not_found", segments=[{"hash": segment_hash("never sent")}]),
        chat("malformed hash (md5:...)", 400, "invalid_segment_hash", segments=[{"hash": "md5:abc"}]),
        chat("unknown registry name", 400, "segment_not_found", segments=[{"name": "no-such-name"}]),
        chat("segment with name and content", 422, "invalid_request", segments=[{"name": "a", "content": "b"}]),
        chat("segment with only an id", 422, "invalid_request", segments=[{"id": "only-an-id"}]),
        chat("prompt longer than the context", 413, "context_length_exceeded",
             messages=[{"role": "user", "content": " word" * (context_tokens + 64)}]),
        BadInput("malformed JSON body", "POST", "/v1/chat/completions", (400,), "invalid_json",
                 raw=b'{"model": "x", "messages": [}'),
        BadInput("JSON array instead of an object", "POST", "/v1/chat/completions", (422,), "invalid_request", body=[1]),
        chat("wrong API key", 401, "invalid_api_key", key="wrong"),
        chat("missing API key", 401, "missing_api_key", key="none"),
        chat("messages missing", 422, "invalid_request", messages=None),
        chat("messages empty", 422, "invalid_request", messages=[]),
        chat("unknown role", 422, "invalid_request", messages=[{"role": "wizard", "content": "hi"}]),
        chat("temperature 7", 422, "invalid_request", temperature=7),
        chat("max_tokens 0", 422, "invalid_request", max_tokens=0),
        chat("max_tokens as text", 422, "invalid_request", max_tokens="ten"),
        chat("five stop sequences", 422, "invalid_request", stop=["a", "b", "c", "d", "e"]),
        chat("unknown segment_boundary policy", 422, "invalid_request", segment_boundary="guess"),
        chat("unknown model", 404, "model_not_found", model="gpt-9"),
        chat("n=2", 400, "unsupported_parameter", n=2),
        chat("image_url content part", 400, "unsupported_parameter", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/a.png"}}]}]),
        chat("logit_bias key that is no token id", 400, "invalid_logit_bias", logit_bias={"word": 5}),
        chat("response_format schema that cannot compile", 400, "invalid_schema", response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}),
        chat("segment ends inside a token, segment_boundary=reject", 400, "segment_boundary_split",
             segment_boundary="reject", segments=[{"id": "cut", "content": "Rules end with a space "},
                                                  {"id": "next", "content": "More rules."}]),
        chat("unknown hash while streaming", 400, "segment_not_found", stream=True,
             segments=[{"hash": segment_hash("never sent either")}]),
        BadInput("pin over the tenant's pin quota", "POST", "/v1/cache/warm", (409,), "pin_quota_exceeded",
                 {"model": model, "pin": True, "segments": [{"id": "big", "content": "Pinned. " + probe}]}),
        BadInput("warm with no segments", "POST", "/v1/cache/warm", (422,), "invalid_request",
                 {"model": model, "segments": []}),
        BadInput("two prompts in one completion", "POST", "/v1/completions", (422,), "invalid_request",
                 {"model": model, "prompt": ["a", "b"]}),
        BadInput("registry name with a space", "PUT", "/v1/segments/bad%20name", (400,), "invalid_segment_name",
                 {"content": "x"}),
        BadInput("registry entry without content", "PUT", "/v1/segments/empty", (422,), "invalid_request", {}),
        BadInput("delete an unknown registry name", "DELETE", "/v1/segments/no-such-name", (404,), "segment_not_found"),
        BadInput("unknown route", "GET", "/v1/nothing-here", (404,), "not_found"),
        BadInput("wrong method", "GET", "/v1/chat/completions", (405,), "method_not_allowed"),
        BadInput("invalid UTF-8 in the body", "POST", "/v1/chat/completions", (400,), None,
                 raw=b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
        BadInput("lone UTF-16 surrogate in a message", "POST", "/v1/chat/completions", (400, 422), None,
                 raw=b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800x"}]}'
                 % model.encode()),
        chat("seed beyond 64 bits", 422, "invalid_request", seed=2**70),
        # Python's JSON reader (and so the server's) accepts the non-standard literal Infinity
        chat("ttl_seconds Infinity", 422, "invalid_request", segments=[{"content": probe[:40], "ttl_seconds": math.inf}]),
        *limit_cases(model),
    ]
    if other_tenant:
        rows += [
            chat("another tenant's segment by hash", 400, "segment_not_found", key="other",
                 segments=[{"hash": segment_hash(probe)}]),
            chat("another tenant's registry name", 400, "segment_not_found", key="other",
                 segments=[{"name": PROBE_NAME}]),
            BadInput("read another tenant's registry entry", "GET", f"/v1/segments/{PROBE_NAME}", (404,),
                     "segment_not_found", key="other"),
        ]
    return rows


def limit_cases(model: str) -> list[BadInput]:
    """One request past each work limit of LIMIT_FLAGS, and the strict booleans."""
    ask = [{"role": "user", "content": "hi"}]
    body_bytes = LIMIT_FLAGS["--max-body-bytes"]
    return [
        BadInput("body over --max-body-bytes", "POST", "/v1/chat/completions", (413,), "request_too_large",
                 raw=b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}'
                 % (model.encode(), b"a" * body_bytes)),
        BadInput("message over --max-prompt-chars", "POST", "/v1/chat/completions", (413,), "prompt_too_large",
                 {"model": model, "messages": [{"role": "user", "content": "a " * LIMIT_FLAGS["--max-prompt-chars"]}]}),
        BadInput("more messages than --max-messages", "POST", "/v1/chat/completions", (400,), "too_many_messages",
                 {"model": model, "messages": ask * (LIMIT_FLAGS["--max-messages"] + 1)}),
        BadInput("stop strings over --max-stop-bytes", "POST", "/v1/chat/completions", (400,), "stop_too_long",
                 {"model": model, "messages": ask, "stop": ["x" * (LIMIT_FLAGS["--max-stop-bytes"] // 2)] * 3}),
        BadInput("registry content over --max-registry-bytes", "PUT", "/v1/segments/too-big", (413,),
                 "registry_full", {"content": "b" * (LIMIT_FLAGS["--max-registry-bytes"] + 1)}),
        BadInput("pin given as 0, not false", "POST", "/v1/cache/warm", (422,), "invalid_request",
                 {"model": model, "pin": 0, "segments": [{"content": "x"}]}),
        BadInput("include_usage given as 0", "POST", "/v1/chat/completions", (422,), "invalid_request",
                 {"model": model, "messages": ask, "stream": True, "stream_options": {"include_usage": 0}}),
    ]


def run_bad_inputs(target: Target, seed: int = 0) -> tuple[list[Row], list[str]]:
    """Send every case; returns the rows and the after-checks (a normal request, the tree check)."""
    own = target.keys_of(target.tenants[0])[0]
    other = target.keys_of(target.tenants[1])[0] if len(target.tenants) > 1 else None
    keys = {"own": own, "other": other, "wrong": "sk-not-a-key", "none": None}
    probe = random_words(random.Random(seed), 300)
    with httpx.Client(base_url=target.url, timeout=600) as http:
        model = served_model(http, own)
        context = http.get("/v1/models", headers=headers(own)).json()["data"][0].get("context_length", 8192)
        _send_probe(http, own, model, probe)
        before = _tenant_state(http, own)
    rows = [_send(target.url, case, keys) for case in cases(model, context, probe, other is not None)]
    with httpx.Client(base_url=target.url, timeout=600) as http:
        unchanged = _tenant_state(http, own) == before
    changed = "unchanged" if unchanged else "**CHANGED**"
    return rows, [f"the own tenant's cache nodes and named segments after all {len(rows)} bad requests: "
                  f"{changed}", *_after_checks(target, model)]


def _tenant_state(http: httpx.Client, key: str | None) -> tuple:
    """What a rejected request must not change: the tenant's nodes (access times, pins) and its registry."""
    nodes = http.get("/v1/cache", headers=headers(key)).json()["nodes"]
    named = http.get("/v1/segments", headers=headers(key)).json()["data"]
    return nodes, named


def _send_probe(http: httpx.Client, key: str | None, model: str, probe: str) -> None:
    """The own tenant's segment (by content and by name) that the other tenant must not reach."""
    http.put(f"/v1/segments/{PROBE_NAME}", json={"content": probe}, headers=headers(key)).raise_for_status()
    http.post("/v1/chat/completions", headers=headers(key), json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "segments": [{"id": "probe", "content": probe}]}).raise_for_status()


def _send(url: str, case: BadInput, keys: dict) -> Row:
    """On a connection of its own: after a 500 the server closes the connection it answered on."""
    request_headers = headers(keys[case.key])
    content = case.raw
    if content is None and case.body is not None:
        # json.dumps, not httpx's encoder: it writes the non-standard Infinity a hostile client may send
        content = json.dumps(_drop_none(case.body)).encode()
    if content is not None:
        request_headers["Content-Type"] = "application/json"
    with httpx.Client(base_url=url, timeout=600) as http:
        response = http.request(case.method, case.path, content=content, headers=request_headers)
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {"message": response.text[:200]}
    return Row(case, response.status_code, error.get("code"), error.get("message", ""))


def _drop_none(body):
    # `messages=None` in a case means "leave the field out"
    return {k: v for k, v in body.items() if v is not None} if isinstance(body, dict) else body


def _after_checks(target: Target, model: str) -> list[str]:
    """A normal request, then each tenant's tree check, each on a fresh connection (a 500 closes one)."""
    key = target.keys_of(target.tenants[0])[0]
    with httpx.Client(base_url=target.url, timeout=600) as http:
        normal = http.post("/v1/chat/completions", headers=headers(key), json={
            "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "still there?"}]})
    lines = [f"a normal chat request afterwards: {normal.status_code}"]
    for tenant in target.tenants:
        with httpx.Client(base_url=target.url, timeout=600) as http:
            check = check_tree(http, tenant, target.keys_of(tenant)[0])
        lines.append(f"GET /v1/cache?check=true ({tenant}): {check.status} {check.check or check.message}")
    return lines


def markdown_table(rows: list[Row]) -> str:
    lines = ["| # | bad input | request | expected | got | code returned | as expected |",
             "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows, 1):
        c = row.case
        who = {"own": "", "other": " (other tenant's key)", "wrong": " (wrong key)", "none": " (no key)"}[c.key]
        lines.append(f"| {i} | {c.what} | `{c.method} {c.path}`{who} | {'/'.join(map(str, c.expect_status))} `{c.expect_code or 'any'}` | "
                     f"{row.status} | {f'`{row.code}`' if row.code else '(none)'} | {'yes' if row.as_expected else '**NO**'} |")
    return "\n".join(lines)
