"""The linear layers of the lean forward, behind one call: `y = linear(x)`, x (M, in) -> y (M, out).

The forward never touches weight tensors directly, so the storage format of a projection is this
module's business alone, and the forward and the batching scheduler stay the same whatever the format:

    DenseLinear   the model dtype's weight (bfloat16 or float32): our AMX kernel where the CPU has it
                  (bfloat16; every row's bits independent of the call), else oneDNN / F.linear
    Int8Linear    per-output-channel int8, torch's `_weight_int8pack_mm`
    Int4Linear    groupwise int4 (32 inputs per scale and offset), `_weight_int4pack_mm_for_cpu`
    BlockLinear   Q4 or Q8 blocks of 32 on our VNNI kernels, int8 activations (engine/native.py)

Why integer kernels only for short forwards: decode reads every weight once per token, so fewer bytes
per weight make it faster; but at many rows the integer kernels are 5-10x slower than the dense one
(measured here: gate|up at 512 rows, 10 ms bf16 vs 97 ms int8). A quantized layer therefore also keeps
the dense weight and runs forwards of more than KERNEL_MAX_ROWS rows on it. The choice depends on the
forward's row count only, never on the cache state, so a cached and an uncached run still do the same
arithmetic; and every batch of 1..KERNEL_MAX_ROWS decode rows takes the integer path, whose rows are
independent of each other (`is_row_invariant` checks it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from segcache.engine.native import AmxWeights, BlockWeights, amx_unavailable_reason
from segcache.engine.quant import INT4_GROUP, Int4Codes, Int8Codes

KERNEL_MAX_ROWS = 16   # the largest decode batch the integer path must serve with row-invariant bits


class DenseLinear:
    """A dense weight (out, in) and optional bias (out,), in the model's dtype.

    In bfloat16 the weight is also packed once, at load, into oneDNN's blocked layout: F.linear packs it
    again on every call, a cost per call that small forwards (decode, a 64-token block) cannot amortize.
    Measured here on one thread: the four projections of a layer over 2,000 rows in 64-row calls 31 ms
    packed vs 49 ms F.linear (27 ms in one F.linear call); a decode row's gate|up 0.27 ms vs 0.42 ms.
    """

    format_name = "dense"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias = weight, bias
        self.amx = AmxWeights(weight, bias) if AmxWeights.takes(weight) and amx_unavailable_reason() is None \
            else None
        self.onednn = _pack(weight) if self.amx is None else None

    def mergeable(self, rows: int) -> bool:
        """Whether a forward may compute `rows` rows in one call with a larger set of rows and keep their bits:
        true on the AMX kernel, whose rows never depend on the call (engine/kernels/amx.c)."""
        return self.amx is not None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, rows: torch.Tensor | None = None) \
            -> torch.Tensor:
        """x (M, in) -> (M, out), written into `out` where given; with `rows` (int64 indices), only those rows
        of x, each into the same row of `out`, as a call of those rows gathered would compute them."""
        if rows is not None:
            return self.amx.matmul(x, out, rows) if self.amx is not None else _gathered(self, x, out, rows)
        if self.amx is not None:
            return self.amx.matmul(x, out)
        if self.onednn is not None and x.shape[0]:
            return _into(torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "none", [], ""), out)
        return _into(F.linear(x, self.weight, self.bias), out)


def _gathered(linear, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`linear` of x's rows `rows` as one call, each written back into the same row of `out`."""
    return out.index_copy_(0, rows, linear(x.index_select(0, rows)))


def _into(y: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """y, or y copied into `out` for kernels that cannot write into a given tensor."""
    return y if out is None else out.copy_(y)


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight in oneDNN's layout for bfloat16 matmuls, or None where that path is missing."""
    if weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available() \
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64)


def dense_rows_from(linear) -> int:
    """The fewest rows a call of `linear` computes on its dense weight: past the integer kernel's rows for a
    quantized linear, any count for a dense one."""
    return KERNEL_MAX_ROWS + 1 if isinstance(linear, _QuantizedLinear) else 1


class _QuantizedLinear:
    """Integer kernel for up to KERNEL_MAX_ROWS rows, the dense weight beyond."""

    format_name = "quantized"

    def __init__(self, dense: DenseLinear):
        self.dense = dense

    @property
    def out_features(self) -> int:
        return self.dense.out_features

    @property
    def in_features(self) -> int:
        return self.dense.in_features

    def mergeable(self, rows: int) -> bool:
        """Forwards of more than KERNEL_MAX_ROWS rows run on the dense weight: mergeable where that is."""
        return rows > KERNEL_MAX_ROWS and self.dense.mergeable(rows)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, rows: torch.Tensor | None = None) \
            -> torch.Tensor:
        """x (M, in) -> (M, out), written into `out` where given; with `rows`, only those rows of x, each into
        the same row of `out` (DenseLinear). Which kernel runs depends on the call's row count M alone."""
        if rows is not None:
            return self.dense(x, out, rows) if rows.numel() > KERNEL_MAX_ROWS else self.kernel_rows(x, out, rows)
        if x.shape[0] > KERNEL_MAX_ROWS:
            return self.dense(x, out)
        y = self.kernel(x, out)
        return y if self.dense.bias is None else y.add_(self.dense.bias)

    def kernel(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def kernel_rows(self, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The integer kernel (and bias) on x's rows `rows` as one call, each into the same row of `out`."""
        return _gathered(self, x, out, rows)


class Int8Linear(_QuantizedLinear):
    format_name = "int8"

    def __init__(self, codes: Int8Codes, dense: DenseLinear):
        super().__init__(dense)
        self.codes = codes.codes.contiguous()                    # (N, K) int8
        self.scale = codes.scale.to(dense.dtype)                 # (N,) in the activations' dtype

    def kernel(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _into(torch.ops.aten._weight_int8pack_mm(x, self.codes, self.scale), out)

    @property
    def num_bytes(self) -> int:
        return self.codes.numel() + self.scale.numel() * self.scale.element_size()


class Int4Linear(_QuantizedLinear):
    format_name = "int4"

    def __init__(self, codes: Int4Codes, dense: DenseLinear):
        super().__init__(dense)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.codes.int(), 1)   # (N, K/2) uint8
        # The kernel computes w = (q - 8) * scale + zero with (K/32, N, 2) scale|zero pairs.
        self.scale_zeros = torch.stack((codes.scale, codes.offset), dim=-1).transpose(0, 1).contiguous() \
            .to(dense.dtype)

    def kernel(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _into(torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, INT4_GROUP, self.scale_zeros), out)

    @property
    def num_bytes(self) -> int:
        return self.packed.numel() + self.scale_zeros.numel() * self.scale_zeros.element_size()


class BlockLinear(_QuantizedLinear):
    """Q4 (int4 format) or Q8 (int8 format, and the output layer of a GGUF's Q8_0 embedding) blocks."""

    def __init__(self, blocks: BlockWeights, dense: DenseLinear):
        super().__init__(dense)
        self.blocks = blocks
        self.format_name = "int4" if blocks.kind == "q4" else "int8"

    def kernel(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.blocks.matmul(x, out)

    def kernel_rows(self, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.dense.bias is None:                                     # read and written in place
            return self.blocks.matmul(x, out, rows)
        return super().kernel_rows(x, out, rows)

    @property
    def num_bytes(self) -> int:
        return self.blocks.num_bytes


def is_row_invariant(linear, batch_sizes=range(1, KERNEL_MAX_ROWS + 1), seed: int = 0,
                     use_threads: Callable[[int], None] | None = None, reordered: bool = False) -> bool:
    """Whether every row of a batch gets the bits it gets alone, for each batch size (a start-up check
    for batched decode: a request's answer must not depend on who shares its forward). `use_threads(rows)`
    sets the threads a call of that many rows runs on; `reordered`: the largest batch in reverse order
    too, so every row also sits in another place."""
    generator = torch.Generator().manual_seed(seed)
    dtype = linear.dense.dtype if isinstance(linear, _QuantizedLinear) else linear.dtype
    rows = torch.randn((max(batch_sizes), linear.in_features), generator=generator).to(dtype)
    if use_threads is not None:
        use_threads(1)
    alone = torch.cat([linear(rows[i:i + 1]) for i in range(rows.shape[0])])
    for size in batch_sizes:
        if use_threads is not None:
            use_threads(size)
        if not torch.equal(linear(rows[:size]), alone[:size]):
            return False
    backwards = torch.arange(rows.shape[0] - 1, -1, -1)
    return not reordered or torch.equal(linear(rows[backwards]), alone[backwards])
