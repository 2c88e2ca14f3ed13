"""Hashes that name things in the cache: segments (what clients send), parts, scopes and chain positions.

Every key is SHA-256 over an unambiguous encoding: a domain tag, then each field as an 8-byte length
followed by its bytes. So ("ab", "c") and ("a", "bc") never share a key, and a part key can never equal
a scope key.
"""

from __future__ import annotations

import hashlib
import re
import sys
from array import array
from collections.abc import Sequence
from typing import NewType

PartKey = NewType("PartKey", str)  # 64 lowercase hex chars: sha256 of (kind, role, text)
ScopeKey = NewType("ScopeKey", str)  # 64 lowercase hex chars: sha256 of what makes KV reusable
SegmentHash = NewType("SegmentHash", str)  # "sha256:<64 lowercase hex>" of a segment's UTF-8 content
ChainKey = NewType("ChainKey", str)  # 64 lowercase hex chars: a node's position (its whole path from the root)

SEGMENT_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def segment_hash(content: str) -> SegmentHash:
    """The hash clients send for a segment: "sha256:" + sha256(content as UTF-8).hexdigest()."""
    return SegmentHash(SEGMENT_HASH_PREFIX + hashlib.sha256(content.encode("utf-8")).hexdigest())


def parse_segment_hash(text: str) -> SegmentHash:
    """Validate a client-supplied segment hash and normalise its hex digits to lowercase.

    Raises ValueError saying what a valid hash looks like and how to compute one.
    """
    how = "expected 'sha256:' followed by 64 hex digits, the SHA-256 of the segment's UTF-8 content"
    if not isinstance(text, str):
        raise ValueError(f"segment hash must be a string: {how}")
    if not text.startswith(SEGMENT_HASH_PREFIX):
        hint = " (add the 'sha256:' prefix)" if _HEX64.fullmatch(text) else ""
        raise ValueError(f"segment hash {_shorten(text)!r} has no 'sha256:' prefix{hint}: {how}")
    digest = text[len(SEGMENT_HASH_PREFIX):]
    if len(digest) != 64:
        raise ValueError(f"segment hash {_shorten(text)!r} has {len(digest)} hex digits, not 64: {how}")
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"segment hash {_shorten(text)!r} contains characters that are not hex digits: {how}")
    return SegmentHash(SEGMENT_HASH_PREFIX + digest.lower())


def part_key(kind: str, role: str, text: str) -> PartKey:
    """Key of one prompt part, e.g. kind "segment"/"message"/"head"/"generation", role "system"/"user"/...

    Text that is not valid Unicode (lone surrogates from JSON) is still hashed, not rejected.
    """
    return PartKey(_digest(b"segcache.part.v1", kind, role, text))


def block_key(kind: str, role: str) -> PartKey:
    """Key of a block of a part of this kind and role: blocks are matched by their token ids under their
    parent, not by the part's text, so the first blocks of a part whose tail changed still match."""
    return PartKey(_digest(b"segcache.block.v1", kind, role))


def scope_key(tenant: str, model_id: str, weights_fingerprint: str, dtype: str,
              tokenizer_fingerprint: str) -> ScopeKey:
    """Key of a cache scope: KV is reusable only between requests that agree on all five fields.

    `dtype` names all the numerics that shape the KV: the compute dtype and the weight format
    (e.g. 'bfloat16/int4')."""
    return ScopeKey(_digest(b"segcache.scope.v1", tenant, model_id, weights_fingerprint, dtype,
                            tokenizer_fingerprint))


def root_chain_key(scope: ScopeKey) -> ChainKey:
    """Chain key of a scope's root."""
    return ChainKey(_digest(b"segcache.root.v1", scope))


def chain_key(parent: ChainKey, key: PartKey, token_ids: Sequence[int]) -> ChainKey:
    """Chain key of the child (key, token_ids) under the node whose chain key is `parent`.

    It names a position by content, not by object identity, so it survives the eviction of the node and
    of its ancestors: a later request can be told "evicted" rather than "new".
    """
    hasher = hashlib.sha256(b"segcache.chain.v1")
    for field in (parent.encode("ascii"), key.encode("ascii"), _token_bytes(token_ids)):
        hasher.update(len(field).to_bytes(8, "big"))
        hasher.update(field)
    return ChainKey(hasher.hexdigest())


def _digest(tag: bytes, *fields: str) -> str:
    hasher = hashlib.sha256(tag)
    for field in fields:
        data = field.encode("utf-8", errors="surrogatepass")
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def _token_bytes(token_ids: Sequence[int]) -> bytes:
    packed = array("q", token_ids)  # int64 each; little-endian on every platform
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
