"""What the fused-convolution kernels share: the geometry of a convolution, argument checks, the block rule.

Layout. Activations are 4-D (N, C, H, W) tensors in channels_last memory, i.e. (N, H, W, C)
row-major: the convolution is a GEMM over M = N * OH * OW rows (one per output pixel) whose
reduction index K = (tap, input channel) walks each tap's C contiguous channels, so the
activation tile of one tap is BLOCK_M pixel rows of BLOCK_K contiguous channels (16-byte loads
when C is a multiple of 8 halves). Weights are used as (K_out, KH, KW, C_in) (channels_last
weights are that already; others are copied once, they are small).

Blocks. A launch's tile sizes come from ``block_config`` (a fixed rule keyed by the GEMM's shape
and the dtype), never from timing at run time: the same shapes and dtype always run the same
code, so results are bit for bit repeatable on one GPU model. Under the interpreter the tiles are
small so that the tiny test shapes still have several row and channel tiles and masked tails.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import triton
import triton.language as tl

from .._common import INTERPRETED, Tensor

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT32_LIMIT = 2 ** 31  # the kernels index with int32


@dataclass(frozen=True)
class Geometry:
    """One convolution: input (n, c_in, h, w), weight (c_out, c_in, kh, kw), stride, padding, output size."""
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: int
    pad: int

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.pad - self.kh) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pad - self.kw) // self.stride + 1

    @property
    def rows(self) -> int:  # M of the forward GEMM and of wgrad's reduction
        return self.n * self.oh * self.ow

    @property
    def input_rows(self) -> int:  # M of dgrad
        return self.n * self.h * self.w


@dataclass(frozen=True)
class Blocks:
    """Tile sizes and launch parameters of one kernel launch (see block_config)."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# ----------------------------------------------------------------------------- block rule
def block_config(kernel: str, gemm_n: int, gemm_k_per_tap: int, dtype: torch.dtype, taps: int = 1) -> Blocks:
    """The tile configuration of ``kernel`` ("fwd", "dgrad" or "wgrad") for a GEMM shape and dtype.

    gemm_n: output columns (fwd: C_out, dgrad: C_in; wgrad: C_in columns of the weight tile);
    gemm_k_per_tap: reduced channels per tap (fwd: C_in, dgrad: C_out; wgrad: C_out rows of the
    weight tile); taps: KH * KW. A rule rather than timing: 128-row tiles (64 for wgrad, which also
    loops over rows), the widest of 64/128 that the channels fill, 64-wide reduction steps for 16-bit
    dtypes when the channels fill them (32 otherwise and for fp32, whose elements are twice as wide),
    8 warps for 128x128 tiles (wgrad: from 128x64), 3 pipeline stages (<= 128 KiB of shared memory for 16-bit operands,
    within sm_80's 164 KiB and sm_90's 228 KiB). The unrolled 3x3 taps keep a row pointer and a
    border mask per tap live: 3x3 forward/dgrad tiles run 8 warps, and a 3x3 dgrad, whose prologue
    also loads y, steps 32 channels at a time; a 64 (C_in) x 128 (C_out) wgrad tile runs 2 stages
    (the configurations compile_check found spilling otherwise); an fp32 3x3 dgrad steps 16.
    """
    if INTERPRETED:  # small tiles: the test shapes get several tiles and tails on every axis
        if kernel == "wgrad":
            return Blocks(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
        return Blocks(block_m=32, block_n=16, block_k=16, num_warps=1, num_stages=1)
    wide = dtype != torch.float32
    block_n = 128 if gemm_n >= 128 else 64
    if kernel == "wgrad":  # [block_k (C_out) x block_n (C_in)] tile, block_m rows per step
        block_k = 128 if gemm_k_per_tap >= 128 else 64
        block_m = 64 if wide else 32
        warps = 8 if block_n * block_k >= 128 * 64 else 4
        stages = 2 if (block_n, block_k) == (64, 128) else 3  # 3 stages spill on sm_80 (compile_check)
        return Blocks(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages)
    block_k = 64 if wide and gemm_k_per_tap >= 64 and not (kernel == "dgrad" and taps > 1) else 32
    if not wide and kernel == "dgrad" and taps > 1:
        block_k = 16  # fp32 3x3 dgrad: 32-channel steps spill 4-64 bytes on sm_80 at 255 registers (compile_check)
    warps = 8 if block_n >= 128 or taps > 1 else 4
    return Blocks(block_m=128, block_n=block_n, block_k=block_k, num_warps=warps, num_stages=3)


def wgrad_splits(geom: Geometry, blocks: Blocks) -> tuple[int, int]:
    """(splits, rows_per_split) of wgrad's split-K over the rows: a rule of the shape only (deterministic).

    About 512 programs (four per SM of a 132-SM H100) when the weight has few tiles, each split at
    least 8 row steps long; splits are whole row steps, the last one shorter. Under the interpreter
    up to three splits, so that the fixed-order reduction of several partials is exercised.
    """
    m = geom.rows
    steps = triton.cdiv(m, blocks.block_m)
    tiles = geom.kh * geom.kw * triton.cdiv(geom.c_in, blocks.block_n) * triton.cdiv(geom.c_out, blocks.block_k)
    if INTERPRETED:
        splits = min(3, steps)
    else:
        splits = max(1, min(triton.cdiv(512, tiles), steps // 8))
    rows_per_split = triton.cdiv(steps, splits) * blocks.block_m
    return triton.cdiv(m, rows_per_split), rows_per_split


def merge_blocks() -> tuple[int, int]:
    """(BLOCK_T, BLOCK_C) of the tile-partial merges: tiles merged per step x channels per program."""
    return (2, 16) if INTERPRETED else (16, 64)


def input_precision(dtype: torch.dtype) -> str:
    """tl.dot's precision for fp32 operands: TF32 where cuDNN convolutions use it (torch's setting), else IEEE."""
    if dtype == torch.float32 and not INTERPRETED and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether operands are upcast before tl.dot: bf16 under the interpreter, whose bf16 dot multiplies raw
    bit patterns (triton issue 11584). On a GPU bf16 goes to the tensor cores as it is."""
    return INTERPRETED and dtype == torch.bfloat16


@triton.jit
def mma(a, b, acc, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation (operands upcast first when DOT_FP32: the interpreter's bf16)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


# ----------------------------------------------------------------------------- checks
def require(condition, message) -> None:
    """Raise RuntimeError(message()) unless ``condition``. Not torch._check: Dynamo cannot trace its
    message closures when they capture tensors (the launchers run under torch.compile on a GPU), while a
    plain ``if`` on shapes, dtypes and layouts is decided (and guarded) at trace time."""
    if not condition:
        raise RuntimeError(message())


def _pair(op: str, name: str, v: Union[int, Sequence[int]]) -> int:
    if isinstance(v, int):
        return v
    v = tuple(v)
    require(len(v) == 2 and v[0] == v[1],
            lambda: f"{op}: {name} must be an int or an equal pair, got {v}")
    return int(v[0])


def check_activation(op: str, name: str, t: Tensor, channels: Optional[int] = None,
                     like: Optional[Tensor] = None) -> None:
    """A 4-D channels_last activation of a supported dtype on a usable device, int32-indexable."""
    require(isinstance(t, torch.Tensor), lambda: f"{op}: {name} must be a tensor, got {type(t).__name__}")
    require(t.dim() == 4, lambda: f"{op}: expected {name} to be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    require(t.dtype in SUPPORTED_DTYPES,
            lambda: f"{op}: {name} must be float16, bfloat16 or float32, got {t.dtype}")
    require(t.is_cuda or (INTERPRETED and t.device.type == "cpu"),
            lambda: f"{op}: {name} is on {t.device}; the Triton kernels need CUDA tensors "
                    "(CPU tensors only under TRITON_INTERPRET=1)")
    require(t.is_contiguous(memory_format=torch.channels_last),
            lambda: f"{op}: {name} must be channels_last-contiguous (N, H, W, C in memory), got strides "
                    f"{t.stride()} for shape {tuple(t.shape)}")
    require(t.numel() < _INT32_LIMIT, lambda: f"{op}: {name} has {t.numel()} elements, over the int32 limit")
    if channels is not None:
        require(t.shape[1] == channels,
                lambda: f"{op}: {name} has {t.shape[1]} channels, expected {channels}")
    if like is not None:
        require(t.dtype == like.dtype, lambda: f"{op}: {name} has dtype {t.dtype}, expected {like.dtype}")
        require(t.device == like.device, lambda: f"{op}: {name} is on {t.device}, expected {like.device}")


def check_shape(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    require(tuple(t.shape) == tuple(shape),
            lambda: f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")


def check_vector(op: str, name: str, t: Optional[Tensor], length: int, device: torch.device) -> Optional[Tensor]:
    """A per-channel fp32 coefficient of shape (length,), contiguous (no copy when it already is)."""
    if t is None:
        return None
    require(isinstance(t, torch.Tensor), lambda: f"{op}: {name} must be a tensor, got {type(t).__name__}")
    require(tuple(t.shape) == (length,), lambda: f"{op}: {name} must have shape ({length},), got {tuple(t.shape)}")
    require(t.dtype == torch.float32, lambda: f"{op}: {name} must be float32, got {t.dtype}")
    require(t.device == device, lambda: f"{op}: {name} is on {t.device}, expected {device}")
    return t.contiguous()


def check_weight(op: str, weight: Tensor, like: Tensor) -> None:
    """A 4-D (C_out, C_in, KH, KW) weight of the activation's dtype and device."""
    require(isinstance(weight, torch.Tensor), lambda: f"{op}: weight must be a tensor")
    require(weight.dim() == 4,
            lambda: f"{op}: expected weight to be 4-D (C_out, C_in, KH, KW), got shape {tuple(weight.shape)}")
    require(weight.dtype == like.dtype, lambda: f"{op}: weight has dtype {weight.dtype}, expected {like.dtype}")
    require(weight.device == like.device, lambda: f"{op}: weight is on {weight.device}, expected {like.device}")


def check_geometry(op: str, x_shape: Sequence[int], weight_shape: Sequence[int], stride, padding) -> Geometry:
    """The convolution's geometry after checking the kernel size, stride, padding and groups."""
    require(len(tuple(weight_shape)) == 4,
            lambda: f"{op}: the weight's shape must be (C_out, C_in, KH, KW), got {tuple(weight_shape)}")
    n, c_in, h, w = x_shape
    c_out, w_in, kh, kw = (int(v) for v in weight_shape)
    require(w_in == c_in,
            lambda: f"{op}: weight has {w_in} input channels, the activation {c_in}"
                    + (f" (grouped convolution, groups = {c_in // w_in}, is not supported: groups must be 1)"
                       if w_in and c_in % w_in == 0 else ""))
    require((kh, kw) in ((1, 1), (3, 3)), lambda: f"{op}: weight's kernel size {kh}x{kw} is not supported "
                                                  "(1x1 or 3x3)")
    stride = _pair(op, "stride", stride)
    padding = _pair(op, "padding", padding)
    require(stride in (1, 2), lambda: f"{op}: stride {stride} is not supported (1 or 2)")
    require(padding == (kh - 1) // 2,
            lambda: f"{op}: padding {padding} is not supported for a {kh}x{kw} kernel (only {(kh - 1) // 2})")
    geom = Geometry(n=n, c_in=c_in, h=h, w=w, c_out=c_out, kh=kh, kw=kw, stride=stride, pad=padding)
    require(geom.oh > 0 and geom.ow > 0, lambda: f"{op}: input {h}x{w} is too small for the kernel")
    require(n * max(c_out, c_in) * max(h * w, geom.oh * geom.ow) < _INT32_LIMIT,
            lambda: f"{op}: activation of shape {tuple(x_shape)} is over the int32 indexing limit")
    return geom


def weight_krsc(weight: Tensor) -> Tensor:
    """The weight as (C_out, KH, KW, C_in) contiguous memory: a view of a channels_last weight, else a copy."""
    return weight.permute(0, 2, 3, 1).contiguous()


def channels_last_out(x: Tensor, n: int, c: int, h: int, w: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    return torch.empty((n, c, h, w), dtype=dtype or x.dtype, device=x.device, memory_format=torch.channels_last)
