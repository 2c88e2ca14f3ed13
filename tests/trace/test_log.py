"""segcache's request log: the writer the server uses, read back by analyze."""

from __future__ import annotations

import json
import threading

from segcache.trace.log import TraceWriter
from segcache.trace.readers import read_trace
from segcache.trace.tokens import WordTokenizer, tokenize_trace


def record(index: int) -> dict:
    text = f"<|im_start|>user\nmessage {index}<|im_end|>\n"
    return {"time": 1.0 + index, "tenant": "t", "model": "m", "endpoint": "chat.completions",
            "parts": [{"kind": "message", "role": "user", "id": None, "hash": None, "text": text, "tokens": 5,
                       "cached_tokens": 0},
                      {"kind": "generation", "role": "assistant", "id": None, "hash": None,
                       "text": "<|im_start|>assistant\n", "tokens": 2, "cached_tokens": 0}],
            "input": text + "<|im_start|>assistant\n", "output": "ok", "messages": [{"role": "user", "content": f"message {index}"}],
            "segments": [], "usage": {"prompt_tokens": 7, "cached_prefix_tokens": 0},
            "timings": {"queue_s": 0.0, "prefill_s": 0.1, "ttft_s": 0.1, "decode_s": 0.1, "total_s": 0.2}}


def test_concurrent_writes_give_whole_lines(tmp_path):
    path = tmp_path / "requests.jsonl"
    with TraceWriter(path) as writer:
        threads = [threading.Thread(target=lambda i=i: [writer.write(record(100 * i + j)) for j in range(50)])
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and sorted(json.loads(line)["time"] for line in lines) == sorted(
        1.0 + 100 * i + j for i in range(4) for j in range(50))


def test_writer_appends_and_flushes_each_record(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(record(0)) + "\n")
    writer = TraceWriter(path)
    writer.write(record(1))
    assert len(path.read_text().splitlines()) == 2  # visible before close
    writer.close()
    assert [r.input for r in read_trace(path).requests] == [record(0)["input"], record(1)["input"]]


def test_recorded_token_counts_decide_which_part_owns_a_token(tmp_path):
    path = tmp_path / "requests.jsonl"
    moved = record(0)
    moved["parts"][0]["tokens"], moved["parts"][1]["tokens"] = 4, 3  # the server counted the seam differently
    with TraceWriter(path) as writer:
        writer.write(moved)
    trace = read_trace(path)
    tokenized = tokenize_trace(trace, WordTokenizer())[0]
    assert [len(ids) for ids in tokenized.part_token_ids] == [4, 3]
