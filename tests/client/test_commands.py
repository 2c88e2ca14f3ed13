"""`segcache lint` as a user runs it."""

import json
import subprocess
import sys

RULES = "\n".join(f"- Rule {n}: small functions, clear names, honest tests ({n})." for n in range(12))


def run_lint(*args):
    return subprocess.run([sys.executable, "-m", "segcache", "lint", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_lint_prints_the_json_report(tmp_path):
    log = tmp_path / "requests.jsonl"
    requests = [{"model": "m", "messages": [{"role": "system", "content": f"Date: 2024-05-0{day}\n{RULES}"},
                                            {"role": "user", "content": "Go."}]} for day in (1, 2, 3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = run_lint(log, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"requests", "input_tokens", "reusable_tokens", "causes"}
    assert report["requests"] == 3 and 0 < report["reusable_tokens"] < report["input_tokens"]
    (cause,) = report["causes"]
    assert set(cause) == {"cause", "tokens_lost", "requests", "example"}
    assert (cause["cause"], cause["requests"]) == ("date", 2) and cause["tokens_lost"] > 0
    assert "2024-05-0" in cause["example"]


def test_lint_says_what_is_wrong_with_a_log(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"messages": []}\n{"prompt": 1}\n')
    result = run_lint(log)
    assert result.returncode == 2
    assert "bad.jsonl:2" in result.stderr and "chat request" in result.stderr
