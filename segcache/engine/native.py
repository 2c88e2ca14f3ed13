"""The block-quantized kernels of engine/kernels/ (amx_qmatmul.c, and decode.c's whole decode step): built
once per machine, called by ctypes.

Why our own kernels: torch's weight-only integer kernels dequantize every weight to floating point for
every row, and their int8 path is single-threaded. Measured here on one thread, a 3,072 x 576 projection
for 16 rows: torch int8 1.2 ms, int4 ~1.0 ms, these kernels 0.7 ms; the 49,152 x 576 output layer for one
row: torch int8 5.3 ms, these kernels 0.8 ms on two threads. These kernels do what llama.cpp's CPU backend
does, in our own code: the activations are quantized per block of 32 to int8 and the dot products run on
VNNI integer instructions, then one float multiply-add per block, on weights packed at load in slabs
(amx_qmatmul.c): tile products from 9 rows up on CPUs with AMX, VNNI alone elsewhere (the same bits).

The same library holds the bfloat16 prefill kernels for CPUs with AMX (amx.c: the matmul; amx_attention.c;
rowwise.c: add + RMSNorm, RoPE + KV write, silu * up), each giving a row the same bits whatever else is in
the call (engine/llama.py `_forward_native`); `amx_unavailable_reason` says why they do not serve, and
`SEGCACHE_AMX=off` turns them off. Without AMX, the attention runs on AVX512-BF16 vectors instead
(`bf16_attention`), with the row-wise kernels; `SEGCACHE_BF16_ATTENTION=off` turns that path off.

Built with the system C compiler on first use into SEGCACHE_KERNEL_DIR (default ~/.cache/segcache/kernels),
one file per source and flags; a machine without gcc or without AVX512-VNNI falls back to torch's kernels
(`unavailable_reason` says why) and `SEGCACHE_KERNELS=torch` asks for that fallback. A kernel's bits
are its own, so which kernels serve is part of the weights fingerprint (engine/model.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

KERNELS = Path(__file__).parent / "kernels"
SOURCE = KERNELS / "decode.c"           # includes the other sources: one translation unit, one library
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
         "-mamx-tile", "-mamx-bf16", "-mamx-int8", "-mavx512bf16",
         "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared")
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
THREADED_WORK = 1 << 18       # weights (N x K) from which a call splits its outputs over the threads


_threads = min(os.cpu_count() or 1, 8)


def set_threads(count: int) -> None:
    """Threads for the large projections (the output layer, gate|up); results do not depend on it."""
    global _threads
    _threads = max(1, count)


def threads() -> int:
    return _threads


def library() -> ctypes.CDLL:
    """The built kernels; a RuntimeError saying why when they cannot serve."""
    loaded, reason = _load()
    if loaded is None:
        raise RuntimeError(f"native kernels unavailable: {reason}")
    return loaded


def unavailable_reason() -> str | None:
    """None when the native kernels can serve, else why not (for the start-up log)."""
    if os.environ.get("SEGCACHE_KERNELS", "").lower() == "torch":
        return "SEGCACHE_KERNELS=torch"
    return _load()[1]


@lru_cache(maxsize=1)
def kernel_id() -> str:
    """A digest of the kernel sources and flags: part of the weights fingerprint, since other kernels
    give other bits."""
    digest = hashlib.sha256(" ".join(FLAGS).encode())
    for path in sorted(KERNELS.glob("*.[ch]")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_SIGNATURES = {   # every entry point of the library returns an int status: 0, or -1 for what it refused
    "segcache_decode_step": [_P, _P, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _I],
    "segcache_pack_block": [_P, _I64, _I64, _I64, _I64, _P, _I],
    "segcache_amx_init": [],
    "segcache_amx_matmul": [_P, _I64, _I64, _P, _P, _I64, _P, _I],
    "segcache_amx_matmul_rows": [_P, _P, _I64, _I64, _P, _P, _I64, _P, _I],
    "segcache_slab_q_matmul": [_I, _P, _I, _I64, _I64, _P, _I64, _P, _I, _I],
    "segcache_slab_q_matmul_rows": [_I, _P, _P, _I, _I64, _I64, _P, _I64, _P, _I, _I],
    "segcache_attention": [_P, _I64, _P, _P, _I64, _P, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _P, _I, _I],
    "segcache_silu_mul": [_P, _I64, _I64, _P, _I],
    "segcache_add_rms_norm": [_P, _P, _I64, _I64, _P, ctypes.c_float, _P, _I],
    "segcache_rope_kv": [_P, _I64, _I64, _I64, _I64, _I64, _P, _P, _I64, _P, _P, _I64, _I],
}


@lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    missing = [flag for flag in CPU_FLAGS if flag not in _cpu_flags()]
    if missing:
        return None, f"the CPU lacks {', '.join(missing)}"
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        return None, "no C compiler (gcc) on PATH"
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as error:
        return None, f"building {SOURCE.name} failed: {error}"
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return library, None


def _build(compiler: str) -> Path:
    """The shared library for this source and these flags, compiled once; concurrent first starts each
    compile into a temporary file and rename, so none ever loads half a file."""
    key = kernel_id()
    directory = Path(os.environ.get("SEGCACHE_KERNEL_DIR", Path.home() / ".cache" / "segcache" / "kernels"))
    target = directory / f"qmatmul-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        subprocess.run([compiler, *FLAGS, "-o", scratch, str(SOURCE)], check=True, capture_output=True, timeout=120)
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return target


class BlockWeights:
    """One projection's weights packed in slabs for amx_qmatmul.c (AMX tiles or VNNI alone): codes uint8
    (ceil(N / 16), K / 32, slab bytes), one record per 16 outputs and block of 32 inputs holding its codes as a
    tile reads them and their float16 scales."""

    def __init__(self, kind: str, codes: torch.Tensor, num_in: int, num_out: int):
        self.kind, self.num_in, self.num_out = kind, num_in, num_out
        self.codes = codes.contiguous()

    @property
    def num_bytes(self) -> int:
        return self.codes.numel()

    def dequantize(self) -> torch.Tensor:
        """The weights (N, K) in float32, as the kernel multiplies them (for tests)."""
        groups, blocks, _ = self.codes.shape
        if self.kind == "q8":
            tile = self.codes[..., :512].view(torch.int8).float()
            d = self.codes[..., 512:].contiguous().view(torch.float16).float()          # (G, blocks, 16)
            m = torch.zeros_like(d)
        else:
            nibbles = self.codes[..., :256]
            tile = torch.cat((nibbles & 15, nibbles >> 4), dim=-1).float()
            d = self.codes[..., 256:288].contiguous().view(torch.float16).float()
            m = self.codes[..., 288:].contiguous().view(torch.float16).float()
        # tile[g, b, 64 r + 4 n + i] = W[16 g + n, 32 b + 4 r + i]
        q = tile.view(groups, blocks, 8, 16, 4).permute(0, 3, 1, 2, 4).reshape(groups * 16, blocks, 32)
        d, m = (t.permute(0, 2, 1).reshape(groups * 16, blocks, 1) for t in (d, m))
        return (q * d + m).view(groups * 16, self.num_in)[:self.num_out]

    def matmul(self, x: torch.Tensor, out: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (M, K) bfloat16 or float32 -> (M, N) in x's dtype, into `out` if given (contiguous). With `rows`
        (int64 row indices), only those rows of x, each product written to the same row
        of `out` (required): what the same rows gathered into a call of their own get, bit for bit."""
        kernels = library()
        x = x.contiguous()
        if rows is not None:
            return self._matmul_rows(x, out, rows)
        out = _output(out, (x.shape[0], self.num_out), x.dtype)
        threads = self._threads()
        is_bf16 = int(x.dtype == torch.bfloat16)
        status = kernels.segcache_slab_q_matmul(int(self.kind == "q8"), x.data_ptr(), is_bf16, x.shape[0],
                                                self.num_in, self.codes.data_ptr(), self.num_out, out.data_ptr(),
                                                threads, slab_tiles())
        if status != 0:
            raise RuntimeError(f"{self.kind} kernel refused a ({x.shape[0]}, {self.num_in}) input")
        return out

    def _matmul_rows(self, x: torch.Tensor, out: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        _check_rows(x, out, rows, self.num_out, x.dtype)
        if rows.numel() == 0:
            return out
        threads = self._threads()
        status = library().segcache_slab_q_matmul_rows(int(self.kind == "q8"), x.data_ptr(), rows.data_ptr(),
                                                       int(x.dtype == torch.bfloat16), rows.numel(), self.num_in,
                                                       self.codes.data_ptr(), self.num_out, out.data_ptr(), threads,
                                                       slab_tiles())
        if status != 0:
            raise RuntimeError(f"{self.kind} kernel refused {rows.numel()} rows of a ({x.shape[0]}, {self.num_in}) "
                               "input")
        return out

    def _threads(self) -> int:
        """Threads for a call: every one for large weights (outputs split over them), else one."""
        return _threads if self.num_out * self.num_in >= THREADED_WORK else 1


def _check_rows(x: torch.Tensor, out: torch.Tensor | None, rows: torch.Tensor, num_out: int,
                dtype: torch.dtype) -> None:
    """A call on named rows writes into `out` in place: a contiguous (.., num_out) output and row indices within
    both x and out, or a ValueError (the kernel trusts them)."""
    if out is None or out.dtype != dtype or not out.is_contiguous() or out.dim() != 2 or out.shape[1] != num_out:
        raise ValueError(f"a call on rows needs a contiguous (.., {num_out}) {dtype} output")
    if rows.dtype != torch.int64 or rows.dim() != 1 or not rows.is_contiguous():
        raise ValueError("rows must be a contiguous 1-D int64 tensor")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= min(x.shape[0], out.shape[0])):
        raise ValueError(f"rows must lie within the input's {x.shape[0]} and the output's {out.shape[0]} rows")


def slab_tiles() -> int:
    """1 where the slab kernels take tile products (AMX-INT8), 0 where they run on VNNI alone: the same bits."""
    return int(amx_unavailable_reason() is None)


def _slabs(codes: torch.Tensor, *parts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """codes (N, K) one byte each and per-block float16 scales (N, K/32) -> (G, K/32, bytes) slabs: the
    codes as a weight tile (64-byte rows of 4 inputs x 16 outputs), then each scale's 16 values; N is padded
    with zero outputs to 16 G."""
    num_out, num_in = codes.shape
    groups, blocks = -(-num_out // 16), num_in // 32
    pad = groups * 16 - num_out
    codes = torch.cat((codes, codes.new_zeros((pad, num_in))))
    tile = codes.view(groups, 16, blocks, 8, 4).permute(0, 2, 3, 1, 4).reshape(groups, blocks, 512).view(torch.uint8)
    scales = [torch.cat((p.to(torch.float16), p.new_zeros((pad, blocks), dtype=torch.float16)))
              .view(groups, 16, blocks).permute(0, 2, 1).contiguous().view(torch.uint8) for p in parts]
    return tile, scales


def pack_q4(codes: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> BlockWeights:
    """Groupwise int4 as the kernel reads it: codes (N, K) 0..15, w = scale * q + low per group of 32
    (GGUF Q4_1's d and m; float16, as GGUF stores them). K must be a multiple of 64."""
    num_out, num_in = codes.shape
    tile, (d, m) = _slabs(codes.to(torch.uint8), scale, low)
    nibbles = tile[..., :256] | (tile[..., 256:] << 4)
    return BlockWeights("q4", torch.cat((nibbles, d, m), dim=-1), num_in, num_out)


def pack_q8(codes: torch.Tensor, scale: torch.Tensor) -> BlockWeights:
    """Blockwise int8 (GGUF Q8_0): codes (N, K) int8 in -127..127, w = scale * q per block of 32."""
    num_out, num_in = codes.shape
    tile, (d,) = _slabs(codes.to(torch.int8), scale)
    return BlockWeights("q8", torch.cat((tile, d), dim=-1), num_in, num_out)


def quantize_q8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense weight (N, K) as Q8_0 blocks: (codes int8, scale float32 (N, K/32)), the scale rounded to
    float16 before the codes are chosen against it."""
    num_out, num_in = weight.shape
    groups = weight.float().view(num_out, num_in // 32, 32)
    scale = (groups.abs().amax(dim=-1) / 127).to(torch.float16).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(groups / safe[..., None]).clamp_(-127, 127).to(torch.int8)
    return codes.view(num_out, num_in), scale


AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16")
AMX_HEAD_DIM = 64          # the head size the attention kernel takes


def amx_unavailable_reason() -> str | None:
    """None when the AMX bfloat16 matmul can serve, else why not (for the start-up log and /health)."""
    if os.environ.get("SEGCACHE_AMX", "").lower() in ("0", "off", "no"):
        return "SEGCACHE_AMX=off"
    return _amx()


@lru_cache(maxsize=1)
def _amx() -> str | None:
    reason = unavailable_reason()
    if reason is not None:
        return reason
    missing = [flag for flag in AMX_FLAGS if flag not in _cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    if library().segcache_amx_init() != 0:
        return "the kernel refused the tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    return None


def _require_amx() -> None:
    """The tile state must be granted before any tile instruction runs (else the process dies of SIGILL)."""
    reason = _amx()
    if reason is not None:
        raise RuntimeError(f"AMX kernels unavailable: {reason}")


def _output(out: torch.Tensor | None, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A kernel's output: `out` where the caller gives one (a span's rows of a larger output), checked, else
    a new tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"output {tuple(out.shape)} {out.dtype} does not take a {shape} {dtype} product")
    return out


class AmxWeights:
    """A dense bfloat16 weight (N, K) packed into AMX tiles (kernels/amx.c), with its bias as float32.

    Every row of a product gets the same bits whatever the call's row count, the row's place and the
    thread count, so a prefill forward runs a linear over all its rows in one call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        num_out, num_in = weight.shape
        self.num_out, self.num_in = num_out, num_in
        # packed[n / 16][k / 32][(k % 32) / 2][n % 16][k % 2] = W[n][k]
        self.packed = weight.to(torch.bfloat16).reshape(num_out // 16, 16, num_in // 32, 16, 2) \
            .permute(0, 2, 3, 1, 4).contiguous()
        self.bias = None if bias is None else bias.float().contiguous()

    @staticmethod
    def takes(weight: torch.Tensor) -> bool:
        """Whether the kernel takes this weight's shape and dtype (K and N multiples of 32, bfloat16)."""
        return weight.dtype == torch.bfloat16 and weight.dim() == 2 \
            and weight.shape[0] % 32 == 0 and weight.shape[1] % 32 == 0

    def matmul(self, x: torch.Tensor, out: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """x (M, K) bfloat16 -> (M, N) bfloat16, into `out` if given (contiguous). With `rows` (int64 row
        indices), only those rows of x, each product written to the same row of `out` (required), in place:
        what the same rows gathered into a call of their own get, bit for bit."""
        _require_amx()
        x = x.contiguous()
        if rows is not None:
            return self._matmul_rows(x, out, rows)
        out = _output(out, (x.shape[0], self.num_out), torch.bfloat16)
        if x.shape[0] == 0:
            return out
        threads = self._threads(x.shape[0])
        status = library().segcache_amx_matmul(x.data_ptr(), x.shape[0], self.num_in, self.packed.data_ptr(),
                                               None if self.bias is None else self.bias.data_ptr(),
                                               self.num_out, out.data_ptr(), threads)
        if status != 0:
            raise RuntimeError(f"AMX kernel refused a ({x.shape[0]}, {self.num_in}) input")
        return out

    def _matmul_rows(self, x: torch.Tensor, out: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        _check_rows(x, out, rows, self.num_out, torch.bfloat16)
        if rows.numel() == 0:
            return out
        status = library().segcache_amx_matmul_rows(x.data_ptr(), rows.data_ptr(), rows.numel(), self.num_in,
                                                    self.packed.data_ptr(),
                                                    None if self.bias is None else self.bias.data_ptr(),
                                                    self.num_out, out.data_ptr(), self._threads(rows.numel()))
        if status != 0:
            raise RuntimeError(f"AMX kernel refused {rows.numel()} rows of a ({x.shape[0]}, {self.num_in}) input")
        return out

    def _threads(self, num_rows: int) -> int:
        return _threads if num_rows * self.num_out * self.num_in >= THREADED_WORK * 4 else 1


def amx_attention(qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, heads: int,
                  kv_heads: int, head_dim: int, pages: torch.Tensor | None = None, layer: int = 0,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal grouped-query attention of T queries at positions start.. (kernels/amx_attention.c):
    qkv (T, >= heads * head_dim) bfloat16 whose first heads * head_dim columns are the rotated queries (rows
    may be strided), keys and values (kv_heads, capacity, head_dim) filled up to start + T -> (T, heads *
    head_dim). `pages` (n, 5) int64, rows (address, origin, from, to, capacity) as fused_decode.page_table
    builds them: tree blocks (L, 2, kv_heads, capacity, head_dim), read at `layer`, that hold positions 0 ..
    the last one's `to` in place of the buffer. A query's bits depend on its q and its keys only, never on
    the call's other queries nor on where its keys are read from. Written into `out` where given."""
    _require_amx()
    return _attention(1, "AMX", qkv, keys, values, start, heads, kv_heads, head_dim, pages, layer, out)


def bf16_attention_unavailable_reason() -> str | None:
    """None when `bf16_attention` can serve (a CPU with AVX512-BF16), else why not. SEGCACHE_BF16_ATTENTION=off
    turns it off (the prefill attends block by block on the library's kernel, as before it)."""
    if os.environ.get("SEGCACHE_BF16_ATTENTION", "").lower() in ("0", "off", "no"):
        return "SEGCACHE_BF16_ATTENTION=off"
    return unavailable_reason() or _bf16()


@lru_cache(maxsize=1)
def _bf16() -> str | None:
    """Whether the CPU lacks AVX512-BF16, read once per process (not from /proc/cpuinfo on every prefill layer)."""
    return None if "avx512_bf16" in _cpu_flags() else "the CPU lacks avx512_bf16"


def bf16_attention(qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, heads: int,
                   kv_heads: int, head_dim: int, pages: torch.Tensor | None = None, layer: int = 0,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """`amx_attention` on AVX512-BF16 vectors, for CPUs without AMX (kernels/amx_attention.c): the same
    arguments and the same independence of a query's bits from the call, other bits than the AMX kernel's."""
    reason = unavailable_reason() or _bf16()
    if reason is not None:
        raise RuntimeError(f"bfloat16 attention unavailable: {reason}")
    return _attention(0, "bfloat16", qkv, keys, values, start, heads, kv_heads, head_dim, pages, layer, out)


def _attention(amx: int, name: str, qkv: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
               heads: int, kv_heads: int, head_dim: int, pages: torch.Tensor | None, layer: int,
               out: torch.Tensor | None) -> torch.Tensor:
    num_rows = qkv.shape[0]
    out = _output(out, (num_rows, heads * head_dim), torch.bfloat16)
    if any(t.dtype != torch.bfloat16 for t in (qkv, keys, values)) or qkv.stride(1) != 1 \
            or not keys.is_contiguous() or not values.is_contiguous():
        raise ValueError(f"{name} attention needs bfloat16 unit-stride rows and contiguous keys and values")
    num_pages = 0 if pages is None else pages.shape[0]
    threads = _threads if num_rows * (start + num_rows) >= 4096 else 1
    status = library().segcache_attention(qkv.data_ptr(), qkv.stride(0), keys.data_ptr(), values.data_ptr(),
                                          keys.shape[1], pages.data_ptr() if num_pages else None, num_pages, layer,
                                          heads, kv_heads, head_dim, start, num_rows, out.data_ptr(), threads, amx)
    if status != 0:
        raise RuntimeError(f"{name} attention refused {heads} heads of {head_dim} over {kv_heads} KV heads"
                           + (f" and pages {pages.tolist()}" if num_pages else ""))
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float32, rounded once (kernels/rowwise.c): gate_up (T, 2 I) bfloat16, contiguous ->
    (T, I) bfloat16."""
    num_rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    gate_up = gate_up.contiguous()
    out = torch.empty((num_rows, inter), dtype=torch.bfloat16)
    if num_rows == 0:
        return out
    threads = _threads if num_rows * inter >= 1 << 16 else 1
    if library().segcache_silu_mul(gate_up.data_ptr(), num_rows, inter, out.data_ptr(), threads) != 0:
        raise RuntimeError(f"silu_mul refused an intermediate size of {inter}")
    return out


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += delta in place (bfloat16, when delta is given), then rmsnorm(x) with `weight` (C,) float32, the
    norm's weight times sqrt(C) (engine/llama.py `_norm_weight`): x (T, C) bfloat16 contiguous -> h (T, C)
    bfloat16 (kernels/rowwise.c)."""
    num_rows, width = x.shape
    if not x.is_contiguous() or weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("add_rms_norm needs a contiguous x (it adds in place) and a contiguous float32 weight")
    out = torch.empty_like(x)
    if num_rows == 0:
        return out
    if delta is not None:
        delta = delta.contiguous()
    threads = _threads if num_rows * width >= 1 << 16 else 1
    status = library().segcache_add_rms_norm(x.data_ptr(), None if delta is None else delta.data_ptr(), num_rows,
                                             width, weight.data_ptr(), eps, out.data_ptr(), threads)
    if status != 0:
        raise RuntimeError(f"add_rms_norm refused a width of {width}")
    return out


def rope_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, heads: int, kv_heads: int,
            head_dim: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Rotate qkv's q columns in place and write the rotated k and the v of positions start.. into one
    layer's keys and values (kv_heads, capacity, head_dim) (kernels/rowwise.c). cos, sin (positions,
    head_dim) bfloat16 contiguous, sin's first half negated."""
    num_rows = qkv.shape[0]
    if num_rows == 0:
        return
    if qkv.stride(1) != 1 or not keys.is_contiguous() or not values.is_contiguous():
        raise ValueError("rope_kv needs unit-stride rows and contiguous keys and values")
    threads = _threads if num_rows >= 64 else 1
    status = library().segcache_rope_kv(qkv.data_ptr(), num_rows, qkv.stride(0), heads, kv_heads, head_dim,
                                        cos.data_ptr(), sin.data_ptr(), start, keys.data_ptr(), values.data_ptr(),
                                        keys.shape[1], threads)
    if status != 0:
        raise RuntimeError(f"rope_kv refused {num_rows} rows at {start} (head size {head_dim})")
