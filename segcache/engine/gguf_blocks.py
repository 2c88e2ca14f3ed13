"""A GGUF file's Q4_0 / Q4_1 blocks as int4 codes, exactly as stored (no re-quantization).

Q4_1 block of 32 weights, 20 bytes:   d (float16) | m (float16) | qs[16]
Q4_0 block of 32 weights, 18 bytes:   d (float16) | qs[16]
        qs[j] & 15 is weight j, qs[j] >> 4 is weight j + 16;  Q4_1: x = d*q + m,  Q4_0: x = d*(q - 8)
As int4 codes (engine/quant.py): scale = d, offset = m + 8d (Q4_1) or 0 (Q4_0).

llama.cpp's converter permutes the rows of q and k for its rotary layout; the rows are output
channels and each row's blocks move with it, so undoing the permutation is a row gather.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segcache.engine.quant import Int4Codes

INT4_TYPES = ("Q4_0", "Q4_1")
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}


class GgufBlocks:
    """The tensors of one GGUF file, by GGUF name (`blk.0.attn_q.weight`), memory-mapped.

    The header is read by `_read_header` rather than gguf.GGUFReader, which takes ~10 s on the default
    model because it wraps each of the 49,152 vocabulary strings in its own array.
    """

    def __init__(self, path: Path):
        self.path = path
        fields, self._tensors, data_start = _read_header(path)
        self._data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
        self.architecture = fields.get("general.architecture")
        self._num_heads = fields.get(f"{self.architecture}.attention.head_count")
        self._num_kv_heads = fields.get(f"{self.architecture}.attention.head_count_kv") or self._num_heads

    def type_name(self, name: str) -> str | None:
        info = self._tensors.get(name)
        return info.type_name if info is not None else None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored, (rows, row_bytes) uint8."""
        info = self._tensors[name]
        return self._data[info.offset:info.offset + info.num_bytes].reshape(info.num_rows, -1)

    def q8_0(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A Q8_0 tensor's blocks (d float16 | 32 int8, 34 bytes): codes (out, in) int8, d (out, in/32) float32."""
        if self.type_name(name) != "Q8_0":
            raise ValueError(f"{name} is {self.type_name(name)}, not Q8_0")
        data = self.raw(name)
        blocks = data.reshape(data.shape[0], -1, 34)
        d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))
        codes = torch.from_numpy(blocks[..., 2:].copy().view(np.int8)).reshape(data.shape[0], -1)
        return codes, d

    def int4(self, name: str) -> Int4Codes:
        """The tensor's blocks as codes (out, in); a ValueError if it is not Q4_0/Q4_1."""
        kind = self.type_name(name)
        if kind not in INT4_TYPES:
            raise ValueError(f"{name} is {kind}, not one of {', '.join(INT4_TYPES)}")
        codes = decode_q4(self.raw(name), kind)
        if self.architecture == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self._num_heads if name.endswith("attn_q.weight") else self._num_kv_heads
            rows = unpermute_rows(codes.codes.shape[0], heads)
            codes = Int4Codes(codes.codes[rows], codes.scale[rows], codes.offset[rows])
        return codes


def decode_q4(data: np.ndarray, kind: str) -> Int4Codes:
    """Raw block bytes (out, num_blocks * block_bytes) uint8 -> codes (out, num_blocks * 32)."""
    num_out = data.shape[0]
    blocks = data.reshape(num_out, -1, _BLOCK_BYTES[kind])                  # (N, B, bytes)
    d = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))   # (N, B)
    if kind == "Q4_1":
        m = torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
        offset, packed = m + 8 * d, blocks[..., 4:]
    else:
        offset, packed = torch.zeros_like(d), blocks[..., 2:]
    packed = torch.from_numpy(packed.copy())                               # (N, B, 16)
    codes = torch.cat((packed & 15, packed >> 4), dim=-1)                   # (N, B, 32)
    return Int4Codes(codes.reshape(num_out, -1), d, offset)


def unpermute_rows(num_rows: int, num_heads: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's rotary permutation (as transformers' GGUF loader does)."""
    half = num_rows // num_heads // 2
    return torch.arange(num_rows).view(num_heads, half, 2).transpose(1, 2).reshape(num_rows)


@dataclass(frozen=True)
class _TensorInfo:
    type_name: str        # GGML type: F32, Q4_0, Q4_1, Q8_0, ...
    num_rows: int
    num_bytes: int
    offset: int           # from the start of the data section


# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array, 10 u64, 11 i64, 12 f64
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_header(path: Path) -> tuple[dict, dict[str, _TensorInfo], int]:
    """(scalar and string metadata, tensor infos, data start) of a GGUF v2/v3 file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        reader = _Cursor(data)
        if reader.take("<I") != 0x46554747:
            raise ValueError(f"{path} is not a GGUF file")
        reader.take("<I")
        num_tensors, num_fields = reader.take("<Q"), reader.take("<Q")
        fields = {}
        for _ in range(num_fields):
            key = reader.string()
            fields[key] = reader.value(reader.take("<I"))
        tensors = {}
        for _ in range(num_tensors):
            name = reader.string()
            dims = [reader.take("<Q") for _ in range(reader.take("<I"))]
            kind = GGMLQuantizationType(reader.take("<I"))
            offset = reader.take("<Q")
            block_size, block_bytes = GGML_QUANT_SIZES[kind]
            num_rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
            tensors[name] = _TensorInfo(kind.name, num_rows, num_rows * dims[0] // block_size * block_bytes, offset)
        alignment = fields.get("general.alignment", 32)
        return fields, tensors, -(-reader.position // alignment) * alignment


class _Cursor:
    def __init__(self, data: mmap.mmap):
        self.data, self.position = data, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.position)
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.take("<Q")
        self.position += length
        return bytes(self.data[self.position - length:self.position]).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == 8:
            return self.string()
        element, count = self.take("<I"), self.take("<Q")
        if element in _SCALARS:     # skip numeric arrays in one step; their values are not needed
            self.position += count * struct.calcsize(_SCALARS[element])
            return None
        for _ in range(count):
            self.value(element)
        return None
