"""A node's KV payload as bytes and back, bit for bit: what the disk tier stores.

    payload  (L, 2, H_kv, T, D) tensor  <->  meta {"dtype", "shape"} + its raw bytes (native byte order)

The bytes are the tensor's own, so a payload read back is the identical KV (bfloat16 included),
and the invariant (cached == uncached, bit for bit) holds for every tier.
"""

from __future__ import annotations

import torch


def encode(kv: torch.Tensor) -> tuple[dict, bytes]:
    kv = kv.detach().contiguous()
    meta = {"dtype": str(kv.dtype).removeprefix("torch."), "shape": list(kv.shape)}
    return meta, kv.reshape(-1).view(torch.uint8).numpy().tobytes()


def decode(meta: dict, data: bytes) -> torch.Tensor:
    dtype = getattr(torch, meta["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown KV dtype {meta['dtype']!r}")
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return raw.view(dtype).reshape(meta["shape"])
