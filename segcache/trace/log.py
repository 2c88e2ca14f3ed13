"""segcache's own request log: the server appends one JSON line per request (`serve --trace-file F`).

A record, as the server writes it:

    {"time": unix_seconds, "tenant": str, "model": str,
     "endpoint": "chat.completions" | "completions" | "messages" | "responses",
     "prompt_cache_key": str | null, "prompt_cache_retention": str | null,   (chat.completions and responses only)
     "parts": [{"kind", "role", "id", "hash", "text", "tokens", "cached_tokens"}],
     "input": full rendered prompt, "output": reply text,
     "messages": [{role, content}], "segments": [{id, hash, content}],
     "usage": the response usage object, "timings": {queue_s, prefill_s, ttft_s, decode_s, total_s}}

`analyze` and `replay` read it back; the tree metric then uses the recorded parts as they were.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from segcache.trace import chatml
from segcache.trace.records import Part, TraceRequest


class TraceWriter:
    """Appends records as JSON lines; safe to call from several threads, each line flushed whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_log_record(record: dict) -> bool:
    parts = record.get("parts")
    return isinstance(parts, list) and all(isinstance(p, dict) and "kind" in p for p in parts)


def request_from_record(record: dict) -> TraceRequest:
    """A TraceRequest from one log record, keeping the recorded parts and their token counts.

    If the recorded part texts do not add up to `input` (an older or foreign writer), the input is
    cut into ChatML parts instead and the recorded counts are not used.
    """
    input_text = record.get("input") or ""
    parts = tuple(Part(p["kind"], p.get("role"), p.get("text") or "") for p in record["parts"])
    counts: tuple[int, ...] | None = tuple(int(p.get("tokens") or 0) for p in record["parts"])
    if "".join(p.text for p in parts) != input_text:
        parts, counts = chatml.parse_parts(input_text), None
    usage = record.get("usage") or {}
    return TraceRequest(
        input=input_text, output=record.get("output") or "", parts=parts, part_tokens=counts,
        messages=tuple(chatml.flatten_message(m) for m in record.get("messages") or ()) or None,
        segments=tuple(record.get("segments") or ()) or None, endpoint=record.get("endpoint"),
        timestamp=record.get("time"), tenant=record.get("tenant"), model=record.get("model"),
        served_cached_tokens=_served_cached(record, usage))


def _served_cached(record: dict, usage: dict) -> int | None:
    if isinstance(usage.get("cached_prefix_tokens"), int):
        return usage["cached_prefix_tokens"]
    counts = [p.get("cached_tokens") for p in record["parts"]]
    return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None
