"""What the Triton primitives share: interpreter switch, launch/registration helper, layout math, configs.

Layout. Every 4-D tensor the kernels take is NCHW-contiguous or channels_last (the
contract); in both, (h, w) collapse into one index hw = h * W + w with one stride, so a
kernel addresses element (n, c, hw) at ``n * stride_n + c * stride_c + hw * stride_hw``
and never copies. Kernels work on [BLOCK_C, BLOCK_HW] tiles of one sample n; which of
the two axes is the contiguous one (hw for NCHW, c for channels_last) decides the tile
shape; _tiles.py picks the tile per kernel, dtype, layout, flags and shape.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Callable

import torch
import triton
import triton.language as tl

Tensor = torch.Tensor

# Read once, before any kernel is defined: @triton.jit makes interpreted kernels then.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_wrap_triton = getattr(torch.library, "wrap_triton", None)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# A seam for benchmarks/triton_host_time.py only: CPU tensors stand in for CUDA tensors (accepted, and
# planned with the GPU's tiles and splits) while that benchmark stubs the compiled kernels' launcher out,
# to time the host path on a machine without a GPU. Never set otherwise: nothing would run.
CPU_STANDS_IN_FOR_CUDA = False


# ----------------------------------------------------------------------------- launch and registration
def launch(kernel):
    """What to index with a grid and call: wrap_triton(kernel) on GPU, so torch.compile traces into the
    launch; the kernel itself under the interpreter."""
    if INTERPRETED or _wrap_triton is None:
        return kernel
    return _wrap_triton(kernel)


def export(name: str, launcher: Callable) -> Callable:
    """The public primitive ``name``: the launcher itself, with no op name of its own (the primitive's op
    is ``resnet_fast::<name>``; the backend table calls this launcher in its place). Under torch.compile
    Dynamo traces the launcher, and ``launch`` hands the kernel to it through wrap_triton."""
    launcher.__name__ = name
    return launcher


# ----------------------------------------------------------------------------- device
def on_device(t: Tensor):
    """``with on_device(y):`` runs a launch on y's GPU and its current stream (Triton launches on the current
    device otherwise: tensors on cuda:1 with cuda:0 current would be read through the wrong context).
    Nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# ----------------------------------------------------------------------------- shared device code
@triton.jit
def pre_activation(y, scale, shift, r, res_scale, res_shift, HAS_RES: tl.constexpr, RES_AFFINE: tl.constexpr):
    """z = y * scale + shift + R on a [BLOCK_C, BLOCK_HW] tile; R = r * res_scale + res_shift, r, or 0."""
    z = y * scale[:, None] + shift[:, None]
    if HAS_RES:
        if RES_AFFINE:
            r = r * res_scale[:, None] + res_shift[:, None]
        z = z + r
    return z


@triton.jit
def relu_grad(grad, y, r, scale, shift, res_scale, res_shift, HAS_RES: tl.constexpr, RES_AFFINE: tl.constexpr,
              RELU: tl.constexpr):
    """g = grad * (z > 0) when RELU (z recomputed from y and r), else grad."""
    if RELU:
        z = pre_activation(y, scale, shift, r, res_scale, res_shift, HAS_RES, RES_AFFINE)
        grad = tl.where(z <= 0, 0.0, grad)  # eager's threshold_backward: a NaN z passes the gradient
    return grad


# ----------------------------------------------------------------------------- checks and layout
def require(ok: bool, message: Callable[[], str]) -> None:
    """``torch._check``'s contract (a RuntimeError with the message, built only on failure) in plain Python,
    which Dynamo traces: under torch.compile ``torch._check`` rejects message closures over tensors."""
    if not ok:
        raise RuntimeError(message())


def check_device(op: str, t: Tensor) -> None:
    """CUDA tensors, or CPU tensors under the interpreter."""
    if not (t.is_cuda or INTERPRETED or CPU_STANDS_IN_FOR_CUDA):
        raise RuntimeError(f"{op} (triton): CPU tensors need TRITON_INTERPRET=1")


def check_activation(op: str, name: str, t: Tensor, like: Tensor | None = None) -> None:
    require(t.dim() == 4, lambda: f"{op}: expected {name} to be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
    require(t.dtype in SUPPORTED_DTYPES,
                 lambda: f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if like is not None:
        require(t.shape == like.shape,
                     lambda: f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} (y's)")
        require(t.dtype == like.dtype, lambda: f"{op}: {name} has dtype {t.dtype}, expected {like.dtype} (y's)")
        require(t.device == like.device, lambda: f"{op}: {name} is on {t.device}, y on {like.device}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def coefficient(op: str, name: str, t: Tensor | None, shape: tuple[int, ...], y: Tensor) -> Tensor | None:
    """A per-channel / per-(n, c) coefficient as a contiguous tensor in y's accumulation dtype."""
    if t is None:
        return None
    require(tuple(t.shape) == shape, lambda: f"{op}: expected {name} of shape {shape}, got {tuple(t.shape)}")
    require(t.device == y.device, lambda: f"{op}: {name} is on {t.device}, y on {y.device}")
    return t.to(acc_dtype(y.dtype)).contiguous()  # no copy when already so (the contract)


def _hw_stride(t: Tensor) -> int | None:
    """The one stride of the collapsed hw = h * W + w index, or None when (h, w) do not collapse."""
    _, _, h, w = t.shape
    _, _, stride_h, stride_w = t.stride()
    if w == 1:
        return stride_h
    if h == 1 or stride_h == w * stride_w:
        return stride_w
    return None


def standard(t: Tensor) -> Tensor:
    """``t`` itself when (h, w) collapse (NCHW-contiguous, channels_last, ...); else a channels_last copy.

    The contract only admits the two standard layouts, so the copy is for callers outside it.
    """
    if _hw_stride(t) is not None:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def plane_strides(t: Tensor | None) -> tuple[int, int, int]:
    """(stride_n, stride_c, stride_hw) of a standard() tensor; zeros for an absent one."""
    if t is None:
        return 0, 0, 0
    return t.stride(0), t.stride(1), _hw_stride(t)


def nchw_vec(y: Tensor, *others: Tensor | None) -> int:
    """VEC of an NCHW launch: how many elements every plane row is known to be aligned to.

    Triton specializes integer arguments only on divisibility by 16, so an NCHW plane of H*W = 196 or 49
    positions (196 = 4 * 49) looks unaligned and every activation access is one element wide (2-byte loads
    for bf16). The launchers pass H*W and the n and c strides divided by VEC and the kernels multiply them
    back by the constexpr VEC: then Triton knows each row starts on a VEC-element boundary and the masks
    change only every VEC positions, and emits VEC-element (up to 16-byte) accesses. VEC is the largest
    power of two dividing H*W and the n, c strides of every operand, at most 16 bytes' worth; 1 for
    channels_last operands (c is their unit-stride axis) and for odd H*W (7 x 7: 49 is odd, no row of a
    2-D [channels, positions] tile can be read with vectors; see NOTES.md). Also 1 for fp64, whose one
    element is 8 bytes already: VEC = 2 made ptxas spill 4-8 bytes (an 8-byte stack frame at 32-40
    registers) in some 14 x 14 variants of the elementwise kernels on sm_90.
    """
    n, c, h, w = y.shape
    if channels_contiguous(y) or y.element_size() > 4:
        return 1
    common = h * w
    for t in (y, *others):
        if t is None:
            continue
        stride_n, stride_c, stride_hw = plane_strides(t)
        if stride_hw != 1:
            return 1
        common = math.gcd(common, stride_n, stride_c)
    if common <= 0:
        return 1
    return min(max(1, 16 // y.element_size()), common & -common)


def vec_strides(t: Tensor | None, vec: int) -> tuple[int, int, int]:
    """plane_strides(t) with the n and c strides divided by VEC (see nchw_vec)."""
    stride_n, stride_c, stride_hw = plane_strides(t)
    return stride_n // vec, stride_c // vec, stride_hw


def channels_contiguous(t: Tensor) -> bool:
    """Whether c, rather than hw, is the unit-stride axis (channels_last; also any layout when H*W == 1)."""
    hw = t.shape[2] * t.shape[3]
    return hw == 1 or (t.stride(1) == 1 and _hw_stride(t) != 1)


# ----------------------------------------------------------------------------- split reductions
# Programs stage 1 aims for: about 8 per SM on an H100 (132 SMs) or A100 (108). A constant rather than a
# function of the SM count, so that the splits, and with them the summation order and the bits of the
# results, are the same on every GPU.
TARGET_PROGRAMS = 1024


def hw_split(y: Tensor, block_c: int) -> tuple[int, int]:
    """(splits, hw_per_split): how stage 1 of a per-channel reduction cuts each sample's H*W.

    Stage 1 runs N * ceil(C / BLOCK_C) * splits programs; split H*W until there are about
    TARGET_PROGRAMS (one full wave, several programs resident per SM), keeping each split a
    multiple of 256 positions (of every BLOCK_HW) so that full tiles need no mask. Under the
    interpreter splits are 8 positions, so the tiny test shapes exercise several splits, the
    merge and a short last split.
    """
    n, c, hw = y.shape[0], y.shape[1], y.shape[2] * y.shape[3]
    if INTERPRETED or not (y.is_cuda or CPU_STANDS_IN_FOR_CUDA):
        align, programs = 8, 1 << 30
    else:
        align, programs = 256, TARGET_PROGRAMS
    splits = max(1, min(triton.cdiv(programs, n * triton.cdiv(c, block_c)), triton.cdiv(hw, align)))
    hw_per_split = triton.cdiv(triton.cdiv(hw, splits), align) * align
    return triton.cdiv(hw, hw_per_split), hw_per_split


def merge_block(num_splits: int) -> int:
    """BLOCK_S of the stage-2 kernels: splits merged per loaded tile (small under the interpreter, to loop)."""
    return 2 if INTERPRETED else min(triton.next_power_of_2(num_splits), 8)
