"""Conversation: a main loop whose history compaction reads its prompt from the cache.

A "summarise the history" request built with an empty system prompt and no tools shares no prefix
with the main loop and misses the cache completely. Built from exactly the main loop's segments,
tools and serialised messages, with only the instruction appended, everything but the instruction
and the last reply is already cached:

    main loop:   [segments][tools] m1 m2 ... mk                     -> reply r
    compaction:  [segments][tools] m1 m2 ... mk  r  instruction     -> summary
                 \\_____________ cached _________/ \\_ computed __/
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from openai.types.chat import ChatCompletion

from segcache.client.client import Client
from segcache.client.segments import Segment, message_text

SUMMARY_PREFIX = "Summary of the conversation so far:\n\n"
PLAIN_SUMMARY_SYSTEM = "You summarise conversations."


class Conversation:
    """A message history sent with the same segments and tools on every call.

    Every request, the compaction one included, is built by `_request`, so the serialisation of
    the shared part cannot drift between the two paths.
    """

    def __init__(self, client: Client, model: str, segments: Sequence[Segment] = (),
                 tools: Sequence[Mapping[str, Any]] | None = None, label: str | None = None) -> None:
        self.client = client
        self.model = model
        self.segments = list(segments)
        self.tools = [dict(t) for t in tools] if tools else None
        self.label = label
        self.history: list[dict[str, Any]] = []
        self.last_response: ChatCompletion | None = None

    def send(self, content: str, **options: Any) -> ChatCompletion:
        """Append a user message, call the model, append its reply (with any tool calls)."""
        self.history.append({"role": "user", "content": content})
        response = self._call(self.history, options)
        self.history.append(assistant_message(response))
        return response

    def append(self, message: Mapping[str, Any]) -> None:
        """Add a message the caller produced, e.g. a `tool` result for the last reply's tool call."""
        self.history.append(dict(message))

    def compact(self, instruction: str, *, model: str | None = None, client: Client | None = None,
                response_format: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Summarise the history with `instruction`, then replace the history with the summary.

        Cache-aligned: the same segments, tools and messages as the main loop, the instruction
        appended as a user message, `tool_choice` "none" so the model answers in text. A different
        compaction model (or server) or structured output cannot share the main loop's cache, so
        those take the plain path: the transcript as one user message, no segments, no tools.
        """
        other_model = (model is not None and model != self.model) or (client is not None and client is not self.client)
        if other_model or response_format is not None:
            summary = self._plain_summary(instruction, client or self.client, model or self.model,
                                          response_format, options)
        else:
            if self.tools:
                options = {**options, "tool_choice": "none"}
            messages = [*self.history, {"role": "user", "content": instruction}]
            summary = message_text(self._call(messages, options).choices[0].message.content)
        self.history = [{"role": "user", "content": SUMMARY_PREFIX + summary}]
        return summary

    def _call(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> ChatCompletion:
        request = dict(options)
        if self.tools:
            request["tools"] = self.tools
        self.last_response = self.client.chat(model=self.model, messages=messages, segments=self.segments,
                                              label=self.label, **request)
        return self.last_response

    def _plain_summary(self, instruction: str, client: Client, model: str,
                       response_format: Mapping[str, Any] | None, options: dict[str, Any]) -> str:
        if response_format is not None:
            options = {**options, "response_format": dict(response_format)}
        messages = [{"role": "system", "content": PLAIN_SUMMARY_SYSTEM},
                    {"role": "user", "content": transcript(self.history) + "\n\n" + instruction}]
        self.last_response = client.chat(model=model, messages=messages, label=self.label, **options)
        return message_text(self.last_response.choices[0].message.content)


def assistant_message(response: ChatCompletion) -> dict[str, Any]:
    """The reply as a history entry, serialised the same way every time."""
    message = response.choices[0].message
    entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        entry["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
    return entry


def transcript(messages: Iterable[Mapping[str, Any]]) -> str:
    return "\n\n".join(f"{m.get('role')}: {message_text(m.get('content'))}" for m in messages)
