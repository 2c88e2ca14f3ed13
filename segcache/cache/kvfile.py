"""One node's KV as a self-checking byte string, the same on disk and in the shared store:

    b"SEGCACHE-KV1\\n" | header length (8 bytes, big-endian) | header (JSON) | payload bytes

header: scope, chain_key, part_key, token_ids, meta (the payload's dtype and shape, for the codec),
        payload_bytes, sha256 of the payload

unpack() checks everything a reader expects (magic, scope, chain key, part key, token ids, length,
checksum): a blob that fails any of them is a miss, never wrong KV.
"""

from __future__ import annotations

import hashlib
import json

MAGIC = b"SEGCACHE-KV1\n"
Encoded = tuple[dict, bytes]   # (meta the codec needs to rebuild the payload, the payload's bytes)


def header_fields(scope: str, chain_key: str, part_key: str, token_ids) -> dict:
    return {"scope": scope, "chain_key": chain_key, "part_key": part_key, "token_ids": list(token_ids)}


def pack_header(fields: dict, meta: dict, payload: bytes) -> bytes:
    header = json.dumps({**fields, "meta": meta, "payload_bytes": len(payload),
                         "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    return MAGIC + len(header).to_bytes(8, "big") + header


def unpack(data: bytes | memoryview, expected: dict) -> Encoded | None:
    """(meta, payload) if `data` is a whole, intact blob of the node `expected` describes; else None."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC or len(view) < len(MAGIC) + 8:
        return None
    start = len(MAGIC) + 8
    length = int.from_bytes(view[len(MAGIC):start], "big")
    try:
        header = json.loads(bytes(view[start:start + length]))
    except ValueError:
        return None
    payload = bytes(view[start + length:])
    if not isinstance(header, dict) or header.get("payload_bytes") != len(payload):
        return None
    if any(header.get(name) != value for name, value in expected.items()):
        return None
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        return None
    return header["meta"], payload
