"""`segcache replay`: requests sent the way the server expects, and predictions checked against a real server."""

from __future__ import annotations

import json

import pytest

from segcache.cli import main
from segcache.trace.readers import read_record, read_trace
from segcache.trace.replay import ReplayCall, call_of, predict, truncate
from segcache.trace.tokens import load_transformers_tokenizer
from trace_builders import chatml_input

SYSTEM = "You are one of three agents working on the same repository. Keep answers short."
BACKEND, FRONTEND = "Agent: backend. You own the API code.", "Agent: frontend. You own the web client."


@pytest.fixture(scope="module")
def chat_tokenizer(model_dir):
    return load_transformers_tokenizer("default")


def test_chatml_input_becomes_a_system_segment_and_messages():
    request = read_record({"input": chatml_input(("system", "rules"), ("user", "hi")), "output": ""})[1]
    call = call_of(request)
    assert [s["content"] for s in call.segments] == ["rules"] and call.segments[0]["hash"].startswith("sha256:")
    assert call.messages == ({"role": "user", "content": "hi"},) and call.prompt is None


def test_text_that_is_not_chatml_goes_to_completions():
    call = call_of(read_record({"input": "Q: 2+2?\nA:", "output": " 4"})[1])
    assert call == ReplayCall((), None, "Q: 2+2?\nA:")


def test_logged_chat_with_only_a_system_message_keeps_it_as_a_message():
    call = call_of(read_record({"messages": [{"role": "system", "content": "s"}], "response": "x"})[1])
    assert call.segments == () and call.messages == ({"role": "system", "content": "s"},)


def test_unknown_roles_are_sent_as_user():
    call = call_of(read_record({"input": chatml_input(("ipython", "out")), "output": ""})[1])
    assert call.messages == ({"role": "user", "content": "out"},)


def test_truncation_keeps_shared_beginnings_shared(chat_tokenizer):
    first = ReplayCall(({"id": "s", "hash": "", "content": SYSTEM},), ({"role": "user", "content": BACKEND},))
    second = ReplayCall(first.segments, ({"role": "user", "content": BACKEND + " And more words."},
                                         {"role": "user", "content": "dropped"}))
    cut_first, cut_second = (truncate(call, chat_tokenizer, 25) for call in (first, second))
    assert cut_first == cut_second  # both spend the 25 tokens inside the shared text
    kept = cut_first.segments[0]["content"] + cut_first.messages[0]["content"]
    assert SYSTEM in kept and len(chat_tokenizer(kept)["input_ids"]) <= 26
    tiny = truncate(first, chat_tokenizer, 5)
    assert tiny.segments[0]["content"] == SYSTEM[: len(tiny.segments[0]["content"])] != SYSTEM
    assert tiny.segments[0]["hash"] != first.segments[0]["hash"]  # re-hashed after the cut
    assert tiny.messages == ({"role": "user", "content": ""},)  # a chat keeps its first message


def test_prediction_of_a_repeated_request_reuses_all_but_its_last_part(chat_tokenizer):
    call = ReplayCall(({"id": "s", "hash": "", "content": SYSTEM},), ({"role": "user", "content": "hi"},))
    first, second = predict([call, call], chat_tokenizer, 256)
    assert first.cached_tokens == 0 and first.input_tokens == second.input_tokens
    generation_prompt = len(chat_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    assert second.cached_tokens == second.input_tokens - generation_prompt


def agents_trace() -> list[dict]:
    """Three agents sharing a system block; the backend agent's second turn appends, the third rewrites."""
    backend_1 = chatml_input(("system", SYSTEM + "\n\n" + BACKEND), ("user", "Add a /health route."))
    frontend = chatml_input(("system", SYSTEM + "\n\n" + FRONTEND), ("user", "Show the health status."))
    backend_2 = chatml_input(("system", SYSTEM + "\n\n" + BACKEND), ("user", "Add a /health route."),
                             ("assistant", "Added it in routes.py."), ("user", "Now add a test."))
    rewritten = chatml_input(("system", SYSTEM + "\n\n" + BACKEND), ("user", "Add a /ready route."),
                             ("assistant", "Added it in routes.py."), ("user", "Now add a test."))
    return [{"input": text, "output": "ok"} for text in (backend_1, frontend, backend_2, rewritten)] + [
        {"input": "Plain completion prompt:", "output": " yes"}, {"input": "Plain completion prompt:", "output": " yes"}]


def test_replay_agrees_with_the_prediction_on_a_real_server(serve, write_jsonl, tmp_path, capsys):
    served_log = tmp_path / "served.jsonl"
    server = serve("--model", "tiny", "--cache-bytes", "64MiB", "--trace-file", str(served_log))
    trace = write_jsonl(agents_trace())
    assert main(["replay", str(trace), "--url", server.url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["agrees"] for row in rows] == [True] * 6
    cached = [row["cached_tokens"] for row in rows]
    # The agents' system blocks are single segments that differ: only "<|im_start|>system\n" is shared.
    assert cached[0] == 0 and cached[1] == 3
    assert 0 < cached[3] < cached[2] < rows[2]["input_tokens"]  # append reuses more than the rewrite
    assert cached[4] == 0 and cached[5] == 0  # a lone prompt part is always computed

    # The server's own log reads back, and the tree metric over it equals what the server served.
    assert main(["analyze", str(served_log), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["shapes"] == ["segcache-log"] and row["requests"] == 6
    assert row["tree_hit_tokens"] == row["served_cached_tokens"] == sum(cached)
    assert len(read_trace(served_log).requests[0].parts) > 2


def test_replay_flags_a_cache_the_prediction_did_not_expect(serve, write_jsonl, capsys):
    server = serve("--model", "tiny", "--cache-bytes", "64MiB")
    trace = write_jsonl(agents_trace()[:1])
    assert main(["replay", str(trace), "--url", server.base_url]) == 0
    capsys.readouterr()
    assert main(["replay", str(trace), "--url", server.base_url, "--keep-cache"]) == 1  # served from the last run
    assert "! differs" in capsys.readouterr().out


def test_replay_truncates_long_requests(serve, write_jsonl, capsys):
    server = serve("--model", "tiny", "--cache-bytes", "64MiB")
    long_user = " ".join(f"word{i}" for i in range(3000))
    trace = write_jsonl([{"input": chatml_input(("system", SYSTEM), ("user", long_user)), "output": ""}] * 2)
    assert main(["replay", str(trace), "--url", server.url, "--max-tokens-per-request", "200",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["input_tokens"] < 230 for row in rows) and rows[1]["cached_tokens"] > 190


def test_unreachable_server_exits_2(write_jsonl, capsys, model_dir):
    trace = write_jsonl(agents_trace()[:1])
    assert main(["replay", str(trace), "--url", "http://127.0.0.1:9"]) == 2
    assert "segcache replay:" in capsys.readouterr().err
