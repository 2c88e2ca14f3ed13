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
