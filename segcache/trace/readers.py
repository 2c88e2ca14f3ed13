"""Read JSONL traces in the shapes agents and proxies write, into one Trace type.

Shapes, told apart per line:
- input-output: {"input": rendered prompt (or a messages list), "output": reply, "timestamp"?,
  "session_id"?, "model"?}
- openai-chat: an OpenAI chat request log, {"messages": [...], "tools"?, "model"?, "response"?},
  or the same wrapped as {"request": {...}, "response": {...}} (also "body" for "request")
- segcache-log: what `segcache serve --trace-file` writes (see segcache.trace.log)
"""

from __future__ import annotations

import json
from pathlib import Path

from segcache.trace import chatml, log
from segcache.trace.records import Trace, TraceRequest


def read_trace(path: str | Path) -> Trace:
    path = Path(path)
    requests, shapes = [], []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                shape, request = read_record(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
            requests.append(request)
            if shape not in shapes:
                shapes.append(shape)
    if not requests:
        raise ValueError(f"{path} holds no requests: expected one JSON object per line")
    return Trace(path.name, tuple(requests), tuple(shapes))


def read_record(record: dict) -> tuple[str, TraceRequest]:
    """(shape name, request) for one parsed JSON line."""
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")
    if log.is_log_record(record):
        return "segcache-log", log.request_from_record(record)
    body = record.get("request") or record.get("body") or record
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return "openai-chat", _from_chat_log(record, body)
    if "input" in record or "prompt" in record:
        return "input-output", _from_input_output(record)
    raise ValueError("unknown record shape: expected 'input' and 'output', an OpenAI 'messages' list, "
                     "or a segcache trace-file record with 'parts'")


def _from_input_output(record: dict) -> TraceRequest:
    given = record.get("input", record.get("prompt"))
    output = _text(record.get("output", record.get("response", record.get("completion"))))
    if isinstance(given, list):  # a messages list under "input"
        messages = [chatml.flatten_message(m) for m in given]
        return _chat_request(messages, output, record)
    if not isinstance(given, str):
        raise ValueError("'input' must be a string or a list of messages")
    return TraceRequest(input=given, output=output, parts=chatml.parse_parts(given), **_meta(record))


def _from_chat_log(record: dict, body: dict) -> TraceRequest:
    messages = chatml.with_tools([chatml.flatten_message(m) for m in body["messages"]], body.get("tools"))
    response = record.get("response", record.get("choices"))
    meta_source = {**body, **{k: v for k, v in record.items() if k not in ("request", "body")}}
    return _chat_request(messages, _reply_text(response), meta_source)


def _chat_request(messages: list[dict], output: str, record: dict) -> TraceRequest:
    parts = chatml.render_parts(messages)
    return TraceRequest(input="".join(p.text for p in parts), output=output, parts=parts,
                        messages=tuple(messages), endpoint="chat.completions", **_meta(record))


def _reply_text(response) -> str:
    """The assistant text of a logged response: a ChatCompletion dict, a choices list, or a string."""
    if isinstance(response, dict):
        response = response.get("choices", response.get("output", response.get("content")))
    if isinstance(response, list):
        if not response:
            return ""
        first = response[0]
        message = first.get("message", first) if isinstance(first, dict) else first
        return chatml.flatten_message(message)["content"] if isinstance(message, dict) else _text(message)
    return _text(response)


def _text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _meta(record: dict) -> dict:
    timestamp = record.get("timestamp", record.get("time", record.get("created")))
    return {"timestamp": timestamp if isinstance(timestamp, (int, float)) else None,
            "session_id": _optional_str(record.get("session_id")), "model": _optional_str(record.get("model"))}


def _optional_str(value) -> str | None:
    return None if value is None else str(value)
