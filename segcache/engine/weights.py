"""The weight format: which one serves (`--weights`), and building each projection in it.

    bf16 | float32   dense weights in that dtype (the dtype of the whole forward)
    int8             int8, quantized at load time from the dense weights
    int4             a GGUF's own Q4_0/Q4_1 blocks as they are; a model without them is quantized
                     groupwise at load time
    auto             int4 where the model file carries Q4 blocks (they ARE the model's weights, so
                     nothing is lost: the dense path dequantizes the same blocks) and the dtype is
                     bfloat16, else the dense dtype. torch's integer kernels take bfloat16 activations
                     on a fast path; with float32 ones they are 5-10x slower than dense (measured).

Quantized formats run on one of two kernel sets, `WeightPlan.kernels`:

    vnni    our block kernels (engine/native.py): int4 as Q4 blocks of 32, int8 as Q8_0 blocks of 32,
            and the output layer from a GGUF's own Q8_0 embedding; activations quantized to int8
    torch   torch's weight-only kernels: int4 groupwise, int8 per output channel (where vnni cannot
            be built: no gcc, no AVX512-VNNI, or SEGCACHE_KERNELS=torch)

The format and the kernels change the KV a prompt produces, so both are part of the cache scope and
the weights fingerprint (engine/model.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from segcache.config import WEIGHT_FORMATS
from segcache.engine import native
from segcache.engine.gguf_blocks import INT4_TYPES, GgufBlocks
from segcache.engine.linear import BlockLinear, DenseLinear, Int4Linear, Int8Linear
from segcache.engine.quant import INT4_GROUP, Int4Codes, concat_int4, quantize_int4, quantize_int8

DENSE_FORMATS = {"bf16": torch.bfloat16, "float32": torch.float32}

log = logging.getLogger("segcache.weights")


@dataclass(frozen=True)
class WeightPlan:
    format: str                 # bf16 | float32 | int8 | int4 (never auto)
    reason: str                 # why this format, for the start-up log
    gguf_path: Path | None      # the file whose raw blocks int4 runs, when there is one
    kernels: str = "dense"      # dense | vnni | torch (module docstring)

    @property
    def quantized(self) -> bool:
        return self.format not in DENSE_FORMATS

    @property
    def scope_name(self) -> str:
        """What the weights fingerprint hashes: the format, and the kernels that give its bits (the block
        kernels of a quantized one; the AMX kernel where it runs the bfloat16 dense projections; elsewhere our
        AVX512-BF16 prefill kernels where they serve: attention and the row-wise ops)."""
        amx = self.format != "float32" and native.amx_unavailable_reason() is None
        attention = (not amx and self.format != "float32" and native.bf16_attention_unavailable_reason() is None)
        suffix = f"+amx-{native.kernel_id()}" if amx else f"+prefill-{native.kernel_id()}" if attention else ""
        if not self.quantized:
            return f"{self.format}/{suffix[1:]}" if suffix else self.format
        kernels = f"vnni-{native.kernel_id()}" if self.kernels == "vnni" else "torch"    # tiles or VNNI: same bits
        return f"{self.format}/{kernels}{suffix}"


def dense_format(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "float32"


def plan_weights(requested: str, dtype: torch.dtype, gguf_path: Path | None) -> WeightPlan:
    if requested not in WEIGHT_FORMATS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, got {requested!r}")
    if requested in DENSE_FORMATS:
        if DENSE_FORMATS[requested] != dtype:
            raise ValueError(f"--weights {requested} needs --dtype {str(DENSE_FORMATS[requested])[6:]} "
                             "(or --dtype auto)")
        return WeightPlan(requested, f"--weights {requested} was asked for", None)
    source = gguf_path if gguf_path is not None and _has_q4_blocks(gguf_path) else None
    unavailable = native.unavailable_reason()
    kernels = "torch" if unavailable else "vnni"
    kernels_note = f"; torch's kernels because {unavailable}" if unavailable else "; on the VNNI block kernels"
    if requested != "auto":
        return WeightPlan(requested, f"--weights {requested} was asked for{kernels_note}",
                          source if requested == "int4" else None, kernels)
    if source is None:
        return WeightPlan(dense_format(dtype), "the model has no Q4 blocks (int8 would re-quantize it)", None)
    if dtype != torch.bfloat16:
        return WeightPlan(dense_format(dtype), "float32 serves as the exact reference: dense float32 weights and "
                          "activations (int4 would quantize both; ask for it with --weights int4)", None)
    return WeightPlan("int4", f"{source.name} carries Q4 blocks: int4 runs them as they are (the same "
                      f"weights the dense path dequantizes, fewer bytes read per decoded token){kernels_note}",
                      source, kernels)


class ProjectionBuilder:
    """Makes each projection of the lean forward in the planned format; notes what it did for the log."""

    def __init__(self, plan: WeightPlan, dtype: torch.dtype):
        self.plan, self.dtype = plan, dtype
        self.gguf = GgufBlocks(plan.gguf_path) if plan.format == "int4" and plan.gguf_path else None
        self.notes: Counter[str] = Counter()

    def build(self, gguf_names: tuple[str, ...], weights: list[torch.Tensor], bias: torch.Tensor | None = None):
        """One projection from its parts (fused parts stack along the output dimension)."""
        dense = DenseLinear(torch.cat(weights) if len(weights) > 1 else weights[0], bias)
        if self.plan.quantized and self.plan.kernels == "vnni":
            return self._blocks(gguf_names, dense, len(weights))
        if self.plan.format == "int8":
            self.notes["quantized to int8 per output channel"] += len(weights)
            return Int8Linear(quantize_int8(dense.weight, self.dtype), dense)
        if self.plan.format != "int4":
            return dense
        if self.gguf is not None:
            return self._from_gguf(gguf_names, dense)
        if dense.in_features % INT4_GROUP:
            self.notes[f"input size not divisible by {INT4_GROUP}: int8 instead"] += len(weights)
            return Int8Linear(quantize_int8(dense.weight, self.dtype), dense)
        self.notes["quantized to int4 (groups of 32) at load"] += len(weights)
        return Int4Linear(quantize_int4(dense.weight), dense)

    def _blocks(self, gguf_names: tuple[str, ...], dense: DenseLinear, num_parts: int):
        """The VNNI kernels: Q4 blocks for int4 (a GGUF's own, else quantized here), Q8 blocks for int8
        and for whatever int4 cannot hold; inputs not a multiple of 64 stay dense."""
        if dense.in_features % 64:
            self.notes["input size not a multiple of 64: dense"] += num_parts
            return dense
        kinds = [self.gguf.type_name(name) for name in gguf_names] if self.gguf is not None else []
        if self.plan.format == "int4":
            if kinds and all(kind in INT4_TYPES for kind in kinds):
                self.notes[f"run as their GGUF {'/'.join(sorted(set(kinds)))} blocks"] += num_parts
                return BlockLinear(_pack_int4(concat_int4([self.gguf.int4(name) for name in gguf_names])), dense)
            if kinds == ["Q8_0"]:
                self.notes[f"run as their GGUF Q8_0 blocks ({gguf_names[0]})"] += num_parts
                codes, scale = self.gguf.q8_0(gguf_names[0])
                return BlockLinear(native.pack_q8(codes, scale), dense)
            if not kinds:
                self.notes["quantized to Q4 blocks of 32 at load"] += num_parts
                return BlockLinear(_pack_int4(quantize_int4(dense.weight)), dense)
        self.notes[(f"{'/'.join(map(str, kinds))} ({', '.join(gguf_names)}): " if kinds else "")
                   + "quantized to Q8 blocks of 32 at load"] += num_parts
        return BlockLinear(native.pack_q8(*native.quantize_q8(dense.weight)), dense)

    def summary(self) -> str:
        return "; ".join(f"{count} tensors {what}" for what, count in sorted(self.notes.items())) or "dense"

    def _from_gguf(self, gguf_names: tuple[str, ...], dense: DenseLinear):
        kinds = [self.gguf.type_name(name) for name in gguf_names]
        if all(kind in INT4_TYPES for kind in kinds):
            self.notes[f"run as their GGUF {'/'.join(sorted(set(kinds)))} blocks"] += len(kinds)
            return Int4Linear(concat_int4([self.gguf.int4(name) for name in gguf_names]), dense)
        self.notes[f"{'/'.join(map(str, kinds))} ({', '.join(gguf_names)}): dequantized, then int8 per "
                   "output channel"] += len(kinds)
        return Int8Linear(quantize_int8(dense.weight, self.dtype), dense)


def _pack_int4(codes: Int4Codes):
    """Int4 codes (w = scale (q - 8) + offset) as Q4 blocks (w = d q + m): m = offset - 8 scale, exact
    for a GGUF's own blocks (offset was m + 8d, computed exactly from two float16 values)."""
    return native.pack_q4(codes.codes, codes.scale, codes.offset - 8 * codes.scale)


def _has_q4_blocks(path: Path) -> bool:
    blocks = GgufBlocks(path)
    return blocks.architecture == "llama" and blocks.type_name("blk.0.ffn_down.weight") in INT4_TYPES
