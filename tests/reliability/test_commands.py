"""`segcache load` and `segcache audit` as users run them, spawning their own tiny-model server."""

import json

from segcache.cli import main


def test_load_spawns_a_server_runs_and_reports_json(tiny_model_dir, capsys):
    code = main(["load", "--spawn", "--model", "tiny", "--cache-bytes", "256KiB", "--clients", "2",
                 "--tenants", "2", "--duration", "4", "--no-clears", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["error_samples"]
    assert summary["config"]["clients"] == 2 and len(summary["tenants"]) == 2
    assert summary["errors"] == 0 and summary["passed"]


def test_audit_spawns_a_server_with_two_tenants_and_reports_json(tiny_model_dir, capsys):
    code = main(["audit", "--spawn", "--model", "tiny", "--samples", "2", "--prefix-words", "40", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1)   # the verdict needs more samples than a test takes; the shape does not
    assert report["within_tenant"]["n_hit"] == report["across_tenants"]["n_miss"] == 2


def test_a_remote_url_is_refused_before_any_request(capsys):
    assert main(["load", "--url", "http://203.0.113.5:8000", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_audit_against_a_url_needs_three_keys(capsys):
    assert main(["audit", "--url", "http://127.0.0.1:9"]) == 2
    assert "--keys" in capsys.readouterr().err
