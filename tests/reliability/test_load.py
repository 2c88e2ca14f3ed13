"""A short load run against a real tiny-model server: no unexpected answer, budget held, tree clean."""

import threading

import httpx
import pytest

from segcache.reliability.load import LoadConfig, run_load
from segcache.reliability.target import Target, parse_keys

KEYS = "ka1:alpha,ka2:alpha,kb1:beta"
ADMIN = "admin-key"
BUDGET = 256 << 10     # the tiny model's KV is 256 B a token: ~1000 tokens, fewer than the tenants' blocks


@pytest.fixture(scope="module")
def target(serve_for_module):
    server = serve_for_module("--model", "tiny", "--cache-bytes", str(BUDGET),
                              env={"SEGCACHE_API_KEYS": KEYS, "SEGCACHE_ADMIN_KEY": ADMIN})
    return Target(server.url, parse_keys(KEYS), ADMIN)


def test_a_short_load_run_has_no_unexpected_answers_and_stays_in_budget(target):
    # Clears are left out here: test_clearing_the_cache_during_a_request_never_fails_it covers them.
    report = run_load(target, LoadConfig(clients=4, duration_s=10, clear_cache=False))
    summary = report.summary()
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["requests"] == summary["succeeded"] + summary["intended_4xx"] > 0
    assert [c["check"] for c in summary["tree_check"]] == ["ok", "ok"]
    memory = summary["memory"]
    assert memory["capacity_bytes"] == BUDGET and memory["samples"] > 0
    assert memory["final_bytes"] <= BUDGET
    assert memory["peak_bytes"] <= BUDGET + memory["overshoot_bound_bytes"]
    assert summary["evictions"].get("evicted", 0) > 0        # the budget is small enough to matter
    assert report.passed


def test_the_run_is_bounded_by_its_request_cap(target):
    report = run_load(target, LoadConfig(clients=3, duration_s=60, max_requests=12, clear_cache=False))
    assert len(report.outcomes) == 12
    assert report.summary()["errors"] == 0


def test_clearing_the_cache_during_a_request_never_fails_it(target):
    url, key = target.url, "kb1"
    statuses = []
    for attempt in range(3):
        body = {"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
                "segments": [{"id": f"s{i}", "content": f"fresh block {i} of attempt {attempt}"} for i in range(20)]}
        answer = {}
        chat = threading.Thread(target=lambda: answer.setdefault("status", httpx.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            chat.start()
            while chat.is_alive():
                assert http.delete("/v1/cache").status_code in (200, 409)
        chat.join()
        statuses.append(answer["status"].status_code)
    assert statuses == [200, 200, 200], [answer["status"].text]
    assert httpx.get(url + "/v1/cache?check=true", headers={"Authorization": f"Bearer {key}"}).json()["check"] == "ok"
