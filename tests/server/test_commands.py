"""The serve and warm commands, as a user runs them."""

import subprocess
import sys

import httpx

from segcache.cache.keys import segment_hash


def test_serve_then_warm_files_then_chat_hits(serve, tmp_path):
    server = serve("--model", "tiny", "--cache-bytes", "16MiB")
    rules = tmp_path / "rules.md"
    rules.write_text("Rules for every agent: be brief.\n")
    done = subprocess.run([sys.executable, "-m", "segcache", "warm", "--url", server.url, str(rules)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rules.md:" in done.stdout and "computed (new)" in done.stdout
    reply = httpx.post(server.base_url + "/chat/completions", json={
        "model": "tiny-random-llama", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
        "segments": [{"id": "rules", "hash": segment_hash(rules.read_text())}]})
    assert reply.json()["usage"]["segments"][0]["status"] == "hit"


def test_serve_rejects_bad_flags_with_a_message():
    done = subprocess.run([sys.executable, "-m", "segcache", "serve", "--cache-bytes", "lots"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot read 'lots' as a size" in done.stderr


def test_the_help_lists_every_command_and_serve_imports_none_of_the_others():
    done = subprocess.run([sys.executable, "-m", "segcache", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("serve", "warm", "analyze", "replay", "bench", "lint", "load", "audit"):
        assert f"    {command} " in done.stdout
    # the benchmarks bring matplotlib and the openai SDK: seconds of imports a server start does not need
    probe = ("import sys; from segcache.cli import build_parser; build_parser('serve').parse_args(['serve']); "
             "print(sorted(m for m in ('matplotlib', 'openai', 'segcache.bench.commands') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
