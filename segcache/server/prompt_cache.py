"""OpenAI's prompt caching fields, `prompt_cache_key` and `prompt_cache_retention`, on our tree.

- `prompt_cache_retention`: `in_memory` (or absent) keeps the server's default lifetime; `24h` makes
  every part of the request (segments without their own `ttl_seconds`, template markup, messages)
  live 24 hours after its last use. Any other value is a 400: a retention we cannot honour must not
  pass silently.
- `prompt_cache_key`: the tree needs no key to find a prefix (parts are content-hashed), so the key
  changes nothing here. It is recorded in the trace log and echoed in the `x-segcache-cache-key`
  response header: a router in front of several replicas can send equal keys to the same replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from segcache.server.errors import ApiError

CACHE_KEY_HEADER = "x-segcache-cache-key"
RETENTION_SECONDS: dict[str, float | None] = {"in_memory": None, "24h": 24 * 3600.0}
MAX_KEY_CHARS = 1024


@dataclass(frozen=True)
class CacheHint:
    key: str | None = None
    retention: str | None = None

    @property
    def ttl_seconds(self) -> float | None:
        return RETENTION_SECONDS[self.retention] if self.retention is not None else None

    def headers(self) -> dict[str, str]:
        return {CACHE_KEY_HEADER: self.key} if self.key is not None else {}

    def trace_fields(self) -> dict:
        return {"prompt_cache_key": self.key, "prompt_cache_retention": self.retention}


def cache_hint(key: str | None, retention: str | None) -> CacheHint:
    """The request's caching fields, checked: a 400 names the bad field and the accepted values."""
    if retention is not None and retention not in RETENTION_SECONDS:
        raise ApiError(400, f"prompt_cache_retention {retention!r} is not supported; send one of "
                       f"{', '.join(map(repr, RETENTION_SECONDS))} or leave it out", "unsupported_value",
                       "prompt_cache_retention")
    if key is not None and (len(key) > MAX_KEY_CHARS or not key.isprintable() or not key.isascii()):
        # The key goes back in a response header: keep it to printable ASCII of bounded length.
        raise ApiError(400, f"prompt_cache_key must be printable ASCII of at most {MAX_KEY_CHARS} characters",
                       "invalid_value", "prompt_cache_key")
    return CacheHint(key, retention)
