"""Integer weight codes, independent of any kernel: how a dense weight becomes int8 or int4, and back.

int8: one scale per output channel, symmetric:      w[n, k] ~ scale[n] * q[n, k],  q in -127..127
int4: groups of 32 inputs per output channel:       w[n, k] ~ scale[n, g] * (q[n, k] - 8) + offset[n, g]
                                                    q in 0..15, g = k // 32
The int4 form is exactly GGUF's Q4_0 (offset 0) and Q4_1 (x = d*q + m = d*(q - 8) + (m + 8d)) blocks,
so a GGUF's own blocks load into it without re-quantizing (engine/gguf_blocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_GROUP = 32


@dataclass(frozen=True)
class Int8Codes:
    codes: torch.Tensor     # (N, K) int8
    scale: torch.Tensor     # (N,) float32

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scale[:, None]                        # (N, K) float32


@dataclass(frozen=True)
class Int4Codes:
    codes: torch.Tensor     # (N, K) uint8, values 0..15
    scale: torch.Tensor     # (N, K // 32) float32
    offset: torch.Tensor    # (N, K // 32) float32

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        num_out, num_in = self.codes.shape
        groups = self.codes.view(num_out, num_in // INT4_GROUP, INT4_GROUP).float() - 8
        return (groups * self.scale[..., None] + self.offset[..., None]).view(num_out, num_in)


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> Int8Codes:
    """Per-output-channel symmetric int8. The scale is rounded to the kernel's dtype first, so the codes
    are chosen against the scale the kernel will actually multiply by."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    scale = scale.to(scale_dtype).float()
    codes = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Codes(codes, scale)


def quantize_int4(weight: torch.Tensor) -> Int4Codes:
    """Groupwise asymmetric int4 (min/max per group of 32), for models that do not ship int4 blocks."""
    num_out, num_in = weight.shape
    if num_in % INT4_GROUP:
        raise ValueError(f"int4 needs input sizes divisible by {INT4_GROUP}, got {num_in}")
    groups = weight.float().view(num_out, num_in // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp_min(torch.finfo(torch.float32).tiny)
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return Int4Codes(codes.view(num_out, num_in), scale, low + 8 * scale)


def concat_int4(parts: list[Int4Codes]) -> Int4Codes:
    """Fused projections (q|k|v, gate|up) stack along the output dimension, codes and scales alike."""
    return Int4Codes(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                     torch.cat([p.offset for p in parts]))
