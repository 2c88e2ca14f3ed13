"""The timing audit's mechanics on a real tiny-model server: report shape and what each procedure hit.

Only mechanics are asserted (sample counts, cached tokens, the report's fields), never timings or
p-values: those are figures for RELIABILITY.md, measured on the default model.
"""

import pytest

from segcache.reliability.audit import SETTINGS, AuditConfig, AuditKeys, as_text, run_audit

KEYS = "victim:org-a,colleague:org-a,stranger:org-b"


@pytest.fixture(scope="module")
def report(serve_for_module):
    """One audit run, read by every test here."""
    server = serve_for_module("--model", "tiny", "--cache-bytes", "64MiB", env={"SEGCACHE_API_KEYS": KEYS})
    return run_audit(server.url, AuditKeys("victim", "colleague", "stranger"),
                     AuditConfig(samples=3, prefix_words=60, seed=7))


def test_the_report_has_both_settings_with_p_values_counts_and_medians(report):
    assert report["samples_per_procedure"] == 3 and report["model"] == "tiny-random-llama"
    for setting in SETTINGS:
        result = report[setting]
        assert result["n_hit"] == result["n_miss"] == 3
        assert 0.0 <= result["p_value"] <= 1.0 and 0.0 <= result["statistic"] <= 1.0
        assert result["median_ttft_hit_s"] > 0 and result["median_ttft_miss_s"] > 0
        assert result["detected"] == (result["p_value"] < report["alpha"])
    assert report["passed"] == (report["within_tenant"]["detected"] and not report["across_tenants"]["detected"])
    assert "within_tenant" in as_text(report)


def test_only_the_same_tenant_attacker_reads_the_victims_prefix_from_cache(report):
    within, across = report["within_tenant"], report["across_tenants"]
    assert within["median_cached_prefix_tokens_hit"] >= within["median_prompt_tokens"] / 2
    assert within["median_cached_prefix_tokens_miss"] < within["median_cached_prefix_tokens_hit"]
    assert across["median_cached_prefix_tokens_hit"] == across["median_cached_prefix_tokens_miss"]


def test_the_audit_refuses_a_server_off_this_machine():
    with pytest.raises(ValueError, match="loopback"):
        run_audit("http://192.0.2.1:8000", AuditKeys("a", "b", "c"), AuditConfig(samples=1))
