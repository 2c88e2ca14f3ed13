"""Client: the official `openai` SDK, plus segments sent once and hash-only after.

The first request that carries a segment sends its content; the server stores the text under its
hash, so later requests send `{"id", "hash"}` only and a 50k-token global block costs a few bytes
on the wire. When the server no longer knows a hash (evicted, restarted) it answers 400
`segment_not_found`; the client then resends every segment with content, once, silently, and counts
it. Against a server that does not speak segments the client renders them into the system message,
byte for byte as segcache would, so the same code runs against any OpenAI-compatible server.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import openai
from openai.types.chat import ChatCompletion

from segcache.client.audit import CacheAudit, record_from_usage
from segcache.client.segments import Segment, inline_messages

logger = logging.getLogger("segcache.client")

SEGMENT_MODES = ("auto", "segments", "inline")
# Error codes of a server that understood the segments and refused them for a reason of its own.
SEGMENT_ERROR_CODES = frozenset({"segment_not_found", "segment_hash_mismatch", "invalid_segment_hash",
                                 "segment_boundary_split"})


class Client:
    """Chat completions with segments over any OpenAI-compatible server.

    segments_mode: 'segments' always sends the `segments` field; 'inline' always renders segments
    into the system message; 'auto' (default) sends segments and switches to inline for the rest of
    the client's life if the server rejects the field (a 4xx that is not a segment error) or
    ignores it (a reply without segment receipts).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 segments_mode: str = "auto", audit: CacheAudit | None = None,
                 openai_client: openai.OpenAI | None = None, **openai_options: Any) -> None:
        if segments_mode not in SEGMENT_MODES:
            raise ValueError(f"segments_mode must be one of {', '.join(SEGMENT_MODES)}, got {segments_mode!r}")
        self.openai = openai_client or openai.OpenAI(
            base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "no-key", **openai_options)
        self.segments_mode = segments_mode
        self.audit = audit or CacheAudit()
        self.resends = 0           # requests repeated with content after segment_not_found
        self.inline_fallbacks = 0  # requests repeated inline when the server did not speak segments
        self._known_hashes: set[str] = set()

    @property
    def sends_segments(self) -> bool:
        return self.segments_mode != "inline"

    def chat(self, *, model: str, messages: Iterable[Mapping[str, Any]], segments: Sequence[Segment] = (),
             label: str | None = None, **options: Any) -> ChatCompletion:
        """`chat.completions.create` with segments; the call is audited under `label`."""
        if options.get("stream"):
            raise ValueError("Client.chat returns whole completions; for streaming call client.openai directly "
                             "with extra_body={'segments': [...]}")
        messages = [dict(m) for m in messages]
        segments = list(segments)
        options = _with_affinity(options, segments)
        if not segments or not self.sends_segments:
            response = self._create(model, inline_messages(segments, messages), options)
            return self._audited(response, label, resent=False)
        try:
            response, resent = self._send_segments(model, messages, segments, options)
        except openai.APIStatusError as error:
            if self.segments_mode == "auto" and _rejects_segments(error):
                return self._fall_back_inline(model, messages, segments, options, label, error)
            raise
        if self.segments_mode == "auto" and not _usage(response).get("segments"):
            return self._fall_back_inline(model, messages, segments, options, label, None)
        self.segments_mode = "segments" if self.segments_mode == "auto" else self.segments_mode
        return self._audited(response, label, resent)

    def forget_segments(self) -> None:
        """Send content again with every segment's next use (e.g. after pointing at a new server)."""
        self._known_hashes.clear()

    def _send_segments(self, model: str, messages: list[dict[str, Any]], segments: list[Segment],
                       options: dict[str, Any]) -> tuple[ChatCompletion, bool]:
        payload = [s.payload(with_content=s.hash not in self._known_hashes) for s in segments]
        try:
            response = self._create(model, messages, options, payload)
            resent = False
        except openai.BadRequestError as error:
            if error.code != "segment_not_found":
                raise
            self.resends += 1
            self._known_hashes.difference_update(s.hash for s in segments)
            response = self._create(model, messages, options, [s.payload(with_content=True) for s in segments])
            resent = True
        self._known_hashes.update(s.hash for s in segments)
        return response, resent

    def _fall_back_inline(self, model: str, messages: list[dict[str, Any]], segments: list[Segment],
                          options: dict[str, Any], label: str | None,
                          error: openai.APIStatusError | None) -> ChatCompletion:
        """Repeat the request with segments in the system message; if that works, stay inline."""
        try:
            response = self._create(model, inline_messages(segments, messages), options)
        except openai.APIStatusError:
            if error is not None:
                raise error from None  # the request fails either way: report the original refusal
            raise
        self.segments_mode = "inline"
        self.inline_fallbacks += 1
        reason = f"rejected them ({error.status_code}: {error.message})" if error else "ignored them"
        logger.warning("server at %s does not speak segments (it %s): rendering them into the system "
                       "message from now on", self.openai.base_url, reason)
        return self._audited(response, label, resent=False)

    def _create(self, model: str, messages: list[dict[str, Any]], options: dict[str, Any],
                segments_payload: list[dict[str, Any]] | None = None) -> ChatCompletion:
        options = dict(options)
        if segments_payload is not None:
            options["extra_body"] = {**(options.get("extra_body") or {}), "segments": segments_payload}
        return self.openai.chat.completions.create(model=model, messages=messages, **options)

    def _audited(self, response: ChatCompletion, label: str | None, resent: bool) -> ChatCompletion:
        self.audit.add(record_from_usage(response.model, _usage(response), label, resent))
        return response


AFFINITY_HEADER = "X-Segcache-Affinity"


def _with_affinity(options: dict[str, Any], segments: list[Segment]) -> dict[str, Any]:
    """Add the header a cache-affine router hashes on (deploy/nginx.conf.template): the request's
    prompt_cache_key, else its first segment's hash, so requests sharing a prefix reach one replica."""
    key = options.get("prompt_cache_key") or (options.get("extra_body") or {}).get("prompt_cache_key")
    key = key or (segments[0].hash if segments else None)
    headers = dict(options.get("extra_headers") or {})
    if key is None or any(name.lower() == AFFINITY_HEADER.lower() for name in headers):
        return options
    return {**options, "extra_headers": {**headers, AFFINITY_HEADER: key}}


def _usage(response: ChatCompletion) -> dict[str, Any]:
    return response.usage.model_dump() if response.usage is not None else {}


def _rejects_segments(error: openai.APIStatusError) -> bool:
    """A 4xx for the request shape (400, 404, 422) that is not one of segcache's segment errors."""
    return error.status_code in (400, 404, 422) and error.code not in SEGMENT_ERROR_CODES
