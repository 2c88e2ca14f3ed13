"""Batch invariance, checked at start-up rather than assumed.

A batched decode step computes each sequence's row of every linear layer inside a (B, in) matmul.
Whether row b of that product has the same bits as the row computed alone depends on the kernel
the library picks for the shape, the dtype, the thread count and the CPU (measured with torch 2.13:
float32 rows are not invariant, as MKL's M=1 path differs from M>=2; bfloat16 rows were on one EPYC
and are not on a Zen 4 one, where oneDNN's matmul over 1,536 inputs differs; docs/weights.md). So the
engine runs the model's own projections on random rows at every batch size 1..max_batch, on the
one thread decode batches use, and batches only if every row equals its lone computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchingVerdict:
    mode: str          # what was asked: auto | on | off
    batched: bool      # whether decode steps share one forward
    reason: str        # why, in words for the start-up log and /health


class BatchingRefused(ValueError):
    """--batching on, but the check found rows that change with the batch."""


def decide_batching(mode: str, linears: Sequence[tuple[str, Callable]] | None, dtype: torch.dtype,
                    max_batch: int, fused_check: Callable[[int], str | None] | None = None) -> BatchingVerdict:
    """`linears`: (name, projection) pairs of the lean forward, or None (library forward: no batching).
    `fused_check(max_batch)`: where decode runs as one native step (engine/fused_decode.py), the check of
    that step's rows, which replaces the per-projection one."""
    if mode == "off":
        return BatchingVerdict(mode, False, "--batching off: one sequence per decode forward")
    if linears is None:
        failure = "this model runs on the library's forward, which decodes one sequence per forward"
    elif max_batch < 2:
        return BatchingVerdict(mode, False, "--max-batch 1: one sequence per decode forward")
    elif fused_check is not None:
        failure = fused_check(max_batch)
        if failure is None:
            return BatchingVerdict(mode, True, f"row invariance of the fused decode step verified in {_name(dtype)} "
                                   f"for batches of up to {max_batch}: decode steps are batched")
    else:
        failure = first_variant_row(linears, dtype, max_batch)
    if failure is None:
        return BatchingVerdict(mode, True, f"row invariance verified in {_name(dtype)} for batch sizes "
                               f"1..{max_batch} on 1 thread: decode steps are batched")
    if mode == "on":
        raise BatchingRefused(f"--batching on refused: {failure}. Batched answers could differ from lone ones; "
                              "use --batching auto (falls back to one sequence per forward) or --dtype bfloat16")
    return BatchingVerdict(mode, False, f"{failure}: decoding one sequence per forward (interleaved)")


def first_variant_row(linears: Sequence[tuple[str, Callable]], dtype: torch.dtype, max_batch: int) -> str | None:
    """None if every projection gives each row the same bits at batch sizes 1..max_batch; else what differed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        for name, linear in linears:
            failure = _check_one(name, linear, dtype, max_batch, generator)
            if failure is not None:
                return failure
        return None
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _check_one(name: str, linear: Callable, dtype: torch.dtype, max_batch: int,
               generator: torch.Generator) -> str | None:
    rows = torch.randn((max_batch, linear.in_features), generator=generator).to(dtype)   # (B, in)
    alone = [linear(rows[i:i + 1]) for i in range(max_batch)]                               # B x (1, out)
    for batch in range(2, max_batch + 1):
        out = linear(rows[:batch])                                                          # (batch, out)
        for i in range(batch):
            if not torch.equal(out[i:i + 1], alone[i]):
                return (f"{_name(dtype)} projection {name} ({linear.in_features}->{linear.out_features}) gives "
                        f"row {i} different bits in a batch of {batch} than alone")
    return None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
