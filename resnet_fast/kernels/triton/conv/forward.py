"""conv_forward: y = conv2d(relu(x * scale + shift) or x, weight), with y's BN statistics, in one pass.

Implicit GEMM over channels_last tensors: row m = (n, oh, ow) of the output, column = output
channel, reduction over (tap r, s) x input channel with the taps unrolled at compile time (no
tap division in the inner loop; a flattened tap loop also miscompiles with 8 warps, triton#1254).

Prologue (``scale``/``shift`` given): each activation tile is the producer BN's output, formed as it
loads: relu(x * scale[c] + shift[c]), rounded to x's dtype (the value a materialized activation would
hold). Zero padding applies to that output, not to x: a padded tap is 0 *after* the affine and the
ReLU (relu(0 * scale + shift) = relu(shift) would otherwise leak into the border pixels).

Epilogue: y is stored in x's dtype, and per (row tile, channel) the Welford partials (mean, M2) of
the *stored, rounded* y, so the BN that follows normalizes exactly the tensor the next layer reads.
``merge_welford_partials`` turns them into the channel's (mean, biased var); the shared
``bn_finalize`` takes it from there (invstd, scale/shift for the next prologue, running statistics).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._common import Tensor, launch
from ._common import (block_config, channels_last_out, check_activation, check_geometry, check_vector, check_weight,
                      dot_in_fp32, input_precision, mma, require, weight_krsc)
from .partials import merge_welford_partials


@triton.jit
def _conv_fwd_kernel(
    x_ptr,  # *T (N, H, W, C_IN): the input, or the producer's raw conv output when PROLOGUE
    w_ptr,  # *T (C_OUT, KH, KW, C_IN): weight, input channels contiguous
    scale_ptr,  # *fp32 (C_IN,): producer BN's gamma * invstd (read only when PROLOGUE)
    shift_ptr,  # *fp32 (C_IN,): producer BN's beta - mean * gamma * invstd (read only when PROLOGUE)
    y_ptr,  # *T (N, OH, OW, C_OUT) out: the convolution
    part_mean_ptr,  # *fp32 (T, C_OUT) out: mean of each (row tile, channel) of the stored y
    part_m2_ptr,  # *fp32 (T, C_OUT) out: sum of squared deviations from that mean
    M,  # rows: N * OH * OW
    H,  # input height
    W,  # input width
    C_IN,  # input channels
    C_OUT,  # output channels
    OH,  # output height
    OW,  # output width
    KH: tl.constexpr,  # kernel height (1 or 3)
    KW: tl.constexpr,  # kernel width (1 or 3)
    STRIDE: tl.constexpr,  # 1 or 2
    PAD: tl.constexpr,  # (KH - 1) // 2
    PROLOGUE: tl.constexpr,  # apply relu(x * scale + shift) to each loaded tile
    DOT_FP32: tl.constexpr,  # upcast operands before tl.dot (bf16 under the interpreter)
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision of fp32 operands ("tf32" or "ieee")
    BLOCK_M: tl.constexpr,  # output pixels per tile
    BLOCK_N: tl.constexpr,  # output channels per tile
    BLOCK_K: tl.constexpr,  # input channels per reduction step
):
    """Moves N*H*W*C_IN*sizeof(T) in (once per output-channel tile, mostly from L2: programs of one row tile
    are adjacent), N*OH*OW*C_OUT*sizeof(T) out, and 2*T*C_OUT*4 bytes of partials."""
    pid_n = tl.program_id(0)  # fastest: the programs sharing an activation row tile run together
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ow = rows % OW
    oh = (rows // OW) % OH
    n = rows // (OW * OH)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < C_OUT
    ks = tl.arange(0, BLOCK_K)
    w_cols = w_ptr + cols[None, :] * (KH * KW * C_IN)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r in tl.static_range(KH):
        ih = oh * STRIDE - PAD + r
        for s in tl.static_range(KW):
            iw = ow * STRIDE - PAD + s
            pix_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_rows = x_ptr + ((n * H + ih) * W + iw) * C_IN
            w_tap = w_cols + (r * KW + s) * C_IN
            for c0 in range(0, C_IN, BLOCK_K):
                cin = c0 + ks
                cin_ok = cin < C_IN
                a_mask = pix_ok[:, None] & cin_ok[None, :]
                a = tl.load(x_rows[:, None] + cin[None, :], mask=a_mask, other=0.0)  # activation operand
                if PROLOGUE:
                    sc = tl.load(scale_ptr + cin, mask=cin_ok, other=0.0)
                    sh = tl.load(shift_ptr + cin, mask=cin_ok, other=0.0)
                    act = tl.maximum(a.to(tl.float32) * sc[None, :] + sh[None, :], 0.0)
                    a = tl.where(a_mask, act, 0.0).to(x_ptr.dtype.element_ty)  # padding is 0 after the affine
                b = tl.load(w_tap + cin[:, None], mask=cin_ok[:, None] & col_ok[None, :], other=0.0)
                acc = mma(a, b, acc, DOT_FP32, INPUT_PRECISION)

    out_mask = row_ok[:, None] & col_ok[None, :]
    y = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * C_OUT + cols[None, :], y, mask=out_mask)
    # Statistics of the stored (rounded) values, two-pass within the tile (at most BLOCK_M rows).
    yv = tl.where(row_ok[:, None], y.to(tl.float32), 0.0)
    count = tl.minimum(M - pid_m * BLOCK_M, BLOCK_M).to(tl.float32)
    mean = tl.sum(yv, axis=0) / count
    dev = tl.where(row_ok[:, None], yv - mean[None, :], 0.0)
    tl.store(part_mean_ptr + pid_m * C_OUT + cols, mean, mask=col_ok)
    tl.store(part_m2_ptr + pid_m * C_OUT + cols, tl.sum(dev * dev, axis=0), mask=col_ok)


def conv_forward(x: Tensor, weight: Tensor, stride=1, padding=0, scale: Optional[Tensor] = None,
                 shift: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y = conv2d(a, weight, stride, padding) with a = relu(x * scale + shift) per channel
    when scale/shift are given (the producer BN+ReLU, padding applied to a), else a = x; mean and biased var
    (C_out,) fp32 of the stored y over (N, OH, OW).

    x: (N, C_in, H, W) channels_last, float16/bfloat16/float32; weight: (C_out, C_in, k, k) of x's dtype,
    k = 1 (padding 0) or 3 (padding 1), stride 1 or 2, groups 1; scale, shift: (C_in,) float32.
    y: (N, C_out, OH, OW) channels_last in x's dtype.
    """
    op = "conv_forward"
    check_activation(op, "x", x)
    check_weight(op, weight, x)
    geom = check_geometry(op, x.shape, weight.shape, stride, padding)
    require((scale is None) == (shift is None), lambda: f"{op}: give both scale and shift, or neither")
    scale = check_vector(op, "scale", scale, geom.c_in, x.device)
    shift = check_vector(op, "shift", shift, geom.c_in, x.device)
    prologue = scale is not None

    blocks = block_config("fwd", geom.c_out, geom.c_in, x.dtype, geom.kh * geom.kw)
    m = geom.rows
    tiles = triton.cdiv(m, blocks.block_m)
    y = channels_last_out(x, geom.n, geom.c_out, geom.oh, geom.ow)
    part_mean = x.new_empty((tiles, geom.c_out), dtype=torch.float32)
    part_m2 = x.new_empty((tiles, geom.c_out), dtype=torch.float32)
    dummy = part_mean  # never read when there is no prologue
    launch(_conv_fwd_kernel)[(triton.cdiv(geom.c_out, blocks.block_n), tiles)](
        x, weight_krsc(weight), scale if prologue else dummy, shift if prologue else dummy, y, part_mean, part_m2,
        m, geom.h, geom.w, geom.c_in, geom.c_out, geom.oh, geom.ow,
        KH=geom.kh, KW=geom.kw, STRIDE=geom.stride, PAD=geom.pad, PROLOGUE=prologue,
        DOT_FP32=dot_in_fp32(x.dtype), INPUT_PRECISION=input_precision(x.dtype),
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_K=blocks.block_k,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    mean, var = merge_welford_partials(part_mean, part_m2, m, blocks.block_m)
    return y, mean, var
