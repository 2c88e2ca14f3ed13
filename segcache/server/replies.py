"""What a generation becomes at the HTTP edge: OpenAI message, chunks, tool calls and logprobs.

One `Reply` per request turns engine events into response JSON, streamed or whole, so the routes
only move events along. Tool calls are read from the text with engine/tools.py.
"""

from __future__ import annotations

from segcache.engine.request import Finished, TextDelta, TokenLogprob
from segcache.engine.tools import ToolCall, ToolCallStream, parse_tool_calls
from segcache.server import protocol


class ChatReply:
    def __init__(self, id_: str, model: str, parse_tools: bool, logprobs: bool, parallel_tool_calls: bool = True):
        """`parallel_tool_calls=False`: a reply carries at most one call (the first the model wrote)."""
        self.id, self.model, self.logprobs = id_, model, logprobs
        self.tools = ToolCallStream() if parse_tools else None
        self.max_calls = None if parallel_tool_calls else 1

    def first_chunks(self) -> list[dict]:
        return [protocol.chat_chunk(self.id, self.model, {"role": "assistant", "content": ""})]

    def chunks(self, delta: TextDelta) -> list[dict]:
        text = self.tools.add(delta.text) if self.tools is not None else delta.text
        if not text and not (self.logprobs and delta.logprobs):
            return []
        return [self._chunk({"content": text}, delta.logprobs)]

    def last_chunks(self, finished: Finished) -> list[dict]:
        content, calls = self.tools.finish() if self.tools is not None else ("", [])
        calls = calls[:self.max_calls]
        chunks = [self._chunk({"content": content}, ())] if content else []
        if calls:
            chunks.append(self._chunk({"tool_calls": [dict(_call_json(c), index=i) for i, c in enumerate(calls)]}, ()))
        chunks.append(protocol.chat_chunk(self.id, self.model, {}, _reason(finished, calls)))
        return chunks

    def body(self, finished: Finished, usage: dict, timings: dict) -> dict:
        content, calls = parse_tool_calls(finished.text) if self.tools is not None else (finished.text, [])
        calls = calls[:self.max_calls]
        body = protocol.chat_completion(self.id, self.model, content, _reason(finished, calls), usage, timings)
        choice = body["choices"][0]
        if calls:
            choice["message"]["content"] = content or None
            choice["message"]["tool_calls"] = [_call_json(c) for c in calls]
        if self.logprobs:
            choice["logprobs"] = chat_logprobs(finished.logprobs)
        return body

    def _chunk(self, delta: dict, logprobs: tuple[TokenLogprob, ...]) -> dict:
        chunk = protocol.chat_chunk(self.id, self.model, delta)
        if self.logprobs:
            chunk["choices"][0]["logprobs"] = chat_logprobs(logprobs)
        return chunk


class CompletionReply:
    def __init__(self, id_: str, model: str, logprobs: bool, echo: str | None):
        self.id, self.model, self.logprobs, self.echo = id_, model, logprobs, echo
        self.offset = len(echo or "")        # text_offset of the next token

    def first_chunks(self) -> list[dict]:
        return [protocol.text_chunk(self.id, self.model, self.echo)] if self.echo else []

    def chunks(self, delta: TextDelta) -> list[dict]:
        if not delta.text and not (self.logprobs and delta.logprobs):
            return []
        chunk = protocol.text_chunk(self.id, self.model, delta.text)
        if self.logprobs:
            chunk["choices"][0]["logprobs"] = self._logprobs(delta.logprobs)
        return [chunk]

    def last_chunks(self, finished: Finished) -> list[dict]:
        return [protocol.text_chunk(self.id, self.model, "", finished.finish_reason)]

    def body(self, finished: Finished, usage: dict, timings: dict) -> dict:
        body = protocol.text_completion(self.id, self.model, (self.echo or "") + finished.text,
                                        finished.finish_reason, usage, timings)
        if self.logprobs:
            body["choices"][0]["logprobs"] = self._logprobs(finished.logprobs)
        return body

    def _logprobs(self, logprobs: tuple[TokenLogprob, ...]) -> dict:
        offsets = []
        for item in logprobs:
            offsets.append(self.offset)
            self.offset += len(item.token)
        return {"tokens": [i.token for i in logprobs], "token_logprobs": [i.logprob for i in logprobs],
                "top_logprobs": [dict(i.top) for i in logprobs], "text_offset": offsets}


def chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> dict:
    return {"content": [dict(_entry(i.token, i.logprob), top_logprobs=[_entry(t, lp) for t, lp in i.top])
                        for i in logprobs], "refusal": None}


def _entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _call_json(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _reason(finished: Finished, calls: list[ToolCall]) -> str:
    return "tool_calls" if calls else finished.finish_reason
