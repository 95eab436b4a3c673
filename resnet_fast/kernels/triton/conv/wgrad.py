"""conv_wgrad: the weight gradient of a convolution between two BNs, both operands recomputed as they load.

Chain (forward): a = relu(x * scale + shift)         (producer BN + ReLU, from the raw saved x; or a = x)
                 y = conv2d(a, w)                     (this convolution)
                 dy = A * dz + B * y + C              (consumer BN backward, see dgrad.py; or dy = dz)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._common import INTERPRETED, Tensor, launch
from ._common import (block_config, check_activation, check_geometry, check_shape, check_vector, dot_in_fp32,
                      input_precision, mma, require, wgrad_splits)

# Backward math.
#
#     dW[k, r, s, c] = sum_m dy[m, k] * a[n, oh * STRIDE - PAD + r, ow * STRIDE - PAD + s, c]
#
# over the M = N*OH*OW output rows m = (n, oh, ow), a = 0 outside the input (padding of the BN-ReLU
# output, so the affine is masked after it is applied). Neither operand is stored: a tile of a is
# relu(x * scale + shift) of the raw x, a tile of dy is A * dz + B * y + C of the raw dz and y, each
# rounded to the activation dtype (the values the materialized tensors would hold).
# Split-K over the rows: split j sums rows [j * R, (j + 1) * R) into its own fp32 partial of dW;
# a second kernel adds the partials in split order (fixed order: deterministic, no atomics) and
# rounds once to the weight's dtype.


@triton.jit
def _conv_wgrad_kernel(
    x_ptr,  # *T (N, H, W, C_IN): the convolution's input, or the producer's raw output when PROLOGUE
    scale_ptr,  # *fp32 (C_IN,): producer BN's gamma * invstd (read only when PROLOGUE)
    shift_ptr,  # *fp32 (C_IN,): producer BN's beta - mean * gamma * invstd (read only when PROLOGUE)
    dz_ptr,  # *T (N, OH, OW, C_OUT): gradient at the consumer BN's output (or dy itself without BN_PROLOGUE)
    y_ptr,  # *T (N, OH, OW, C_OUT): this convolution's raw output (read only when BN_PROLOGUE)
    coef_a_ptr,  # *fp32 (C_OUT,): A of dy = A * dz + B * y + C (read only when BN_PROLOGUE)
    coef_b_ptr,  # *fp32 (C_OUT,): B
    coef_c_ptr,  # *fp32 (C_OUT,): C
    part_ptr,  # *fp32 (S, C_OUT, KH, KW, C_IN) out: each split's partial dW
    M,  # rows: N * OH * OW
    H,  # input height
    W,  # input width
    C_IN,  # input channels (the weight tile's columns)
    C_OUT,  # output channels (the weight tile's rows)
    OH,  # output height
    OW,  # output width
    ROWS_PER_SPLIT,  # rows per split, a multiple of BLOCK_M (the last split holds the rest)
    KH: tl.constexpr,  # kernel height (1 or 3)
    KW: tl.constexpr,  # kernel width (1 or 3)
    STRIDE: tl.constexpr,  # 1 or 2
    PAD: tl.constexpr,  # (KH - 1) // 2
    PROLOGUE: tl.constexpr,  # a = relu(x * scale + shift) (else a = x)
    BN_PROLOGUE: tl.constexpr,  # dy = A * dz + B * y + C (else dy = dz)
    DOT_FP32: tl.constexpr,  # upcast operands before tl.dot (bf16 under the interpreter)
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision of fp32 operands ("tf32" or "ieee")
    BLOCK_M: tl.constexpr,  # rows per reduction step
    BLOCK_N: tl.constexpr,  # input channels per tile
    BLOCK_K: tl.constexpr,  # output channels per tile
):
    pid_c = tl.program_id(0)  # (tap, input-channel block), tap-major
    pid_k = tl.program_id(1)
    split = tl.program_id(2)
    c_blocks = tl.cdiv(C_IN, BLOCK_N)
    tap = pid_c // c_blocks
    r = tap // KW
    s = tap % KW
    cin = (pid_c % c_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cin_ok = cin < C_IN
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = k < C_OUT
    if PROLOGUE:
        sc = tl.load(scale_ptr + cin, mask=cin_ok, other=0.0)
        sh = tl.load(shift_ptr + cin, mask=cin_ok, other=0.0)
    if BN_PROLOGUE:
        ca = tl.load(coef_a_ptr + k, mask=k_ok, other=0.0)
        cb = tl.load(coef_b_ptr + k, mask=k_ok, other=0.0)
        cc = tl.load(coef_c_ptr + k, mask=k_ok, other=0.0)

    acc = tl.zeros([BLOCK_K, BLOCK_N], tl.float32)
    lo = split * ROWS_PER_SPLIT
    for m0 in range(lo, tl.minimum(lo + ROWS_PER_SPLIT, M), BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        ow = rows % OW
        oh = (rows // OW) % OH
        n = rows // (OW * OH)
        # dy tile [BLOCK_M, BLOCK_K]
        dy_mask = row_ok[:, None] & k_ok[None, :]
        dy_offs = rows[:, None] * C_OUT + k[None, :]
        dy = tl.load(dz_ptr + dy_offs, mask=dy_mask, other=0.0)  # activation operand
        if BN_PROLOGUE:
            yv = tl.load(y_ptr + dy_offs, mask=dy_mask, other=0.0).to(tl.float32)  # activation operand
            dyf = ca[None, :] * dy.to(tl.float32) + cb[None, :] * yv + cc[None, :]
            dy = tl.where(dy_mask, dyf, 0.0).to(dz_ptr.dtype.element_ty)
        # activation tile [BLOCK_M, BLOCK_N] of this tap
        ih = oh * STRIDE - PAD + r
        iw = ow * STRIDE - PAD + s
        pix_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_mask = pix_ok[:, None] & cin_ok[None, :]
        x_rows = x_ptr + ((n * H + ih) * W + iw) * C_IN
        a = tl.load(x_rows[:, None] + cin[None, :], mask=a_mask, other=0.0)  # activation operand
        if PROLOGUE:
            act = tl.maximum(a.to(tl.float32) * sc[None, :] + sh[None, :], 0.0)
            a = tl.where(a_mask, act, 0.0).to(x_ptr.dtype.element_ty)  # padding is 0 after the affine
        acc = mma(tl.trans(dy), a, acc, DOT_FP32, INPUT_PRECISION)

    offs = ((split * C_OUT + k[:, None]) * (KH * KW) + tap) * C_IN + cin[None, :]
    tl.store(part_ptr + offs, acc, mask=k_ok[:, None] & cin_ok[None, :])


@triton.jit
def _split_sum_kernel(
    part_ptr,  # *fp32 (S, NUMEL): per-split partials
    out_ptr,  # *T (NUMEL,) out: their sum in split order, rounded once
    NUMEL,  # elements per partial
    SPLITS,  # S
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    acc = tl.zeros([BLOCK], tl.float32)
    for j in range(0, SPLITS):
        acc += tl.load(part_ptr + j * NUMEL + offs, mask=ok, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def conv_wgrad(x: Tensor, dz: Tensor, weight_shape: tuple[int, int, int, int], stride=1, padding=0, *,
               scale: Optional[Tensor] = None, shift: Optional[Tensor] = None, y: Optional[Tensor] = None,
               coef_a: Optional[Tensor] = None, coef_b: Optional[Tensor] = None, coef_c: Optional[Tensor] = None,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """dW of y = conv2d(a, W, stride, padding): sum over rows of dy x a, with a = relu(x * scale + shift)
    when scale/shift are given (else a = x) and dy = A * dz + B * y + C when y and the coefficients are given
    (else dy = dz; A, B, C as in ``conv_dgrad``).

    x: (N, C_in, H, W) channels_last; dz (and y): (N, C_out, OH, OW) channels_last of x's dtype;
    weight_shape: (C_out, C_in, k, k); scale, shift: (C_in,), coef_*: (C_out,) float32.
    Returns (C_out, C_in, k, k) channels_last in ``out_dtype`` (x's dtype by default).
    """
    op = "conv_wgrad"
    check_activation(op, "x", x)
    check_activation(op, "dz", dz, like=x)
    geom = check_geometry(op, x.shape, weight_shape, stride, padding)
    check_shape(op, "dz", dz, (geom.n, geom.c_out, geom.oh, geom.ow))
    require((scale is None) == (shift is None), lambda: f"{op}: give both scale and shift, or neither")
    scale = check_vector(op, "scale", scale, geom.c_in, x.device)
    shift = check_vector(op, "shift", shift, geom.c_in, x.device)
    bn_args = (y, coef_a, coef_b, coef_c)
    require(all(t is None for t in bn_args) or all(t is not None for t in bn_args),
            lambda: f"{op}: give all of y, coef_a, coef_b, coef_c (the consumer BN's backward), or none")
    if y is not None:
        check_activation(op, "y", y, like=x)
        check_shape(op, "y", y, dz.shape)
    coefs = [check_vector(op, name, t, geom.c_out, x.device)
             for name, t in (("coef_a", coef_a), ("coef_b", coef_b), ("coef_c", coef_c))]
    out_dtype = out_dtype or x.dtype
    require(out_dtype in (torch.float16, torch.bfloat16, torch.float32),
            lambda: f"{op}: out_dtype must be float16, bfloat16 or float32, got {out_dtype}")
    prologue, bn_prologue = scale is not None, y is not None

    blocks = block_config("wgrad", geom.c_in, geom.c_out, x.dtype, geom.kh * geom.kw)
    splits, rows_per_split = wgrad_splits(geom, blocks)
    taps = geom.kh * geom.kw
    part = x.new_empty((splits, geom.c_out, geom.kh, geom.kw, geom.c_in), dtype=torch.float32)
    dummy = part  # stands for the arguments a disabled prologue never reads
    grid = (taps * triton.cdiv(geom.c_in, blocks.block_n), triton.cdiv(geom.c_out, blocks.block_k), splits)
    launch(_conv_wgrad_kernel)[grid](
        x, scale if prologue else dummy, shift if prologue else dummy, dz, y if bn_prologue else dz,
        *(c if bn_prologue else dummy for c in coefs), part,
        geom.rows, geom.h, geom.w, geom.c_in, geom.c_out, geom.oh, geom.ow, rows_per_split,
        KH=geom.kh, KW=geom.kw, STRIDE=geom.stride, PAD=geom.pad, PROLOGUE=prologue, BN_PROLOGUE=bn_prologue,
        DOT_FP32=dot_in_fp32(x.dtype), INPUT_PRECISION=input_precision(x.dtype),
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_K=blocks.block_k,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)

    dw = torch.empty((geom.c_out, geom.kh, geom.kw, geom.c_in), dtype=out_dtype, device=x.device)
    numel = dw.numel()
    block = 64 if INTERPRETED else 1024
    launch(_split_sum_kernel)[(triton.cdiv(numel, block),)](part, dw, numel, splits, BLOCK=block)
    return dw.permute(0, 3, 1, 2)  # (C_out, C_in, KH, KW) view, channels_last memory
