"""conv_dgrad: the input gradient of a convolution whose output went through BN, with the producer's dReLU.

Chain (forward): a = relu(x_prev * scale_prev + shift_prev)   (producer BN + ReLU; or a = input)
                 y = conv2d(a, w)                             (this convolution, stored raw)
                 z = gamma * (y - mean) * invstd + beta       (consumer BN; dz = dL/dz is given)
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._common import Tensor, launch
from ._common import (block_config, channels_last_out, check_activation, check_geometry, check_shape, check_vector,
                      check_weight, dot_in_fp32, input_precision, mma, require, weight_krsc)
from .partials import merge_sum_partials

# Backward math.
#
# BN backward (per channel k of y, over its M = N*OH*OW values, xhat = (y - mean) * invstd):
#     dgamma = sum dz * xhat,   dbeta = sum dz
#     dy = gamma * invstd * (dz - dbeta / M - xhat * dgamma / M)
#        = A * dz + B * y + C   with   A = gamma * invstd,
#                                      B = -A * invstd * dgamma / M,
#                                      C = -A * dbeta / M - B * mean
# so the prologue forms dy tile by tile from the raw dz and y (neither dy nor xhat is stored) and
# rounds it to the activation dtype (the value a materialized dy would hold). Out-of-range taps are
# zero *after* that affine: C != 0.
#
# Convolution backward to its input (dgrad), rows = input pixels (n, ih, iw):
#     da[n, ih, iw, c] = sum_{r, s, k} dy[n, oh, ow, k] * w[k, r, s, c]
#                        over the taps with oh * STRIDE - PAD + r = ih, ow * STRIDE - PAD + s = iw,
# i.e. a convolution of dy with the flipped kernel (the transposed convolution); for stride 2 only taps
# where (ih + PAD - r) and (iw + PAD - s) are even contribute (the others are masked rows: correct, not
# fast; the per-layer table keeps stride-2 dgrads on cuDNN). A 1x1 stride-1 dgrad is the plain GEMM dy @ w.
#
# Producer's ReLU and BN backward (epilogue): g = da * (x_prev * scale_prev + shift_prev > 0) is the
# gradient at the producer BN's output, stored in the activation dtype; for that BN's backward each
# row tile writes, from the stored (rounded) g,
#     sum g   and   sum g * (x_prev - mean_prev)
# whose fixed-order merge gives dbeta_prev and dgamma_prev / invstd_prev (and so A, B, C of the producer).


@triton.jit
def _conv_dgrad_kernel(
    dz_ptr,  # *T (N, OH, OW, C_OUT): gradient at the consumer BN's output (or dy itself without BN_PROLOGUE)
    y_ptr,  # *T (N, OH, OW, C_OUT): this convolution's raw output (read only when BN_PROLOGUE)
    coef_a_ptr,  # *fp32 (C_OUT,): A of dy = A * dz + B * y + C (read only when BN_PROLOGUE)
    coef_b_ptr,  # *fp32 (C_OUT,): B
    coef_c_ptr,  # *fp32 (C_OUT,): C
    w_ptr,  # *T (C_OUT, KH, KW, C_IN): weight, input channels contiguous
    x_prev_ptr,  # *T (N, H, W, C_IN): producer's raw output (read only when PRODUCER)
    scale_prev_ptr,  # *fp32 (C_IN,): producer BN's gamma * invstd (read only when PRODUCER)
    shift_prev_ptr,  # *fp32 (C_IN,): producer BN's beta - mean * gamma * invstd (read only when PRODUCER)
    mean_prev_ptr,  # *fp32 (C_IN,): producer BN's batch mean (read only when PRODUCER)
    g_ptr,  # *T (N, H, W, C_IN) out: gradient at the producer BN's output (at the input without PRODUCER)
    part_g_ptr,  # *fp32 (T, C_IN) out: per (row tile, channel) sum g (written only when PRODUCER)
    part_gx_ptr,  # *fp32 (T, C_IN) out: per (row tile, channel) sum g * (x_prev - mean_prev) (when PRODUCER)
    M,  # rows: N * H * W input pixels
    H,  # input height
    W,  # input width
    C_IN,  # input channels (this GEMM's columns)
    C_OUT,  # output channels (reduced)
    OH,  # output height
    OW,  # output width
    KH: tl.constexpr,  # kernel height (1 or 3)
    KW: tl.constexpr,  # kernel width (1 or 3)
    STRIDE: tl.constexpr,  # forward stride, 1 or 2
    PAD: tl.constexpr,  # forward padding, (KH - 1) // 2
    BN_PROLOGUE: tl.constexpr,  # form dy = A * dz + B * y + C on the fly (else dz is dy)
    PRODUCER: tl.constexpr,  # apply the producer's ReLU mask and write its BN partials
    DOT_FP32: tl.constexpr,  # upcast operands before tl.dot (bf16 under the interpreter)
    INPUT_PRECISION: tl.constexpr,  # tl.dot precision of fp32 operands ("tf32" or "ieee")
    BLOCK_M: tl.constexpr,  # input pixels per tile
    BLOCK_N: tl.constexpr,  # input channels per tile
    BLOCK_K: tl.constexpr,  # output channels per reduction step
):
    pid_n = tl.program_id(0)  # fastest: the programs sharing a row tile run together
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    iw = rows % W
    ih = (rows // W) % H
    n = rows // (W * H)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < C_IN
    ks = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r in tl.static_range(KH):
        th = ih + PAD - r  # = oh * STRIDE when this tap reaches row ih from output row oh
        oh = th // STRIDE
        for s in tl.static_range(KW):
            tw = iw + PAD - s
            ow = tw // STRIDE
            pix_ok = row_ok & (th >= 0) & (tw >= 0) & (oh < OH) & (ow < OW)
            if STRIDE > 1:
                pix_ok = pix_ok & (th % STRIDE == 0) & (tw % STRIDE == 0)
            out_rows = ((n * OH + oh) * OW + ow) * C_OUT
            w_tap = w_ptr + (r * KW + s) * C_IN + cols[None, :]
            for k0 in range(0, C_OUT, BLOCK_K):
                k = k0 + ks
                k_ok = k < C_OUT
                mask = pix_ok[:, None] & k_ok[None, :]
                offs = out_rows[:, None] + k[None, :]
                dy = tl.load(dz_ptr + offs, mask=mask, other=0.0)  # activation operand
                if BN_PROLOGUE:
                    yv = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # activation operand
                    ca = tl.load(coef_a_ptr + k, mask=k_ok, other=0.0)
                    cb = tl.load(coef_b_ptr + k, mask=k_ok, other=0.0)
                    cc = tl.load(coef_c_ptr + k, mask=k_ok, other=0.0)
                    dyf = ca[None, :] * dy.to(tl.float32) + cb[None, :] * yv + cc[None, :]
                    dy = tl.where(mask, dyf, 0.0).to(dz_ptr.dtype.element_ty)  # zero outside after the affine
                wt = tl.load(w_tap + k[:, None] * (KH * KW * C_IN), mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc = mma(dy, wt, acc, DOT_FP32, INPUT_PRECISION)

    out_mask = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None] * C_IN + cols[None, :]
    if PRODUCER:
        xp = tl.load(x_prev_ptr + offs, mask=out_mask, other=0.0).to(tl.float32)
        sc = tl.load(scale_prev_ptr + cols, mask=col_ok, other=0.0)
        sh = tl.load(shift_prev_ptr + cols, mask=col_ok, other=0.0)
        mu = tl.load(mean_prev_ptr + cols, mask=col_ok, other=0.0)
        # the producer's ReLU mask as eager's threshold_backward: 0 where the pre-activation <= 0 (NaN passes)
        g = tl.where(out_mask, tl.where(xp * sc[None, :] + sh[None, :] <= 0.0, 0.0, acc), 0.0)
        g = g.to(g_ptr.dtype.element_ty)
        tl.store(g_ptr + offs, g, mask=out_mask)
        gf = g.to(tl.float32)  # the partials see the stored values (masked entries are 0)
        xc = tl.where(out_mask, xp - mu[None, :], 0.0)
        tl.store(part_g_ptr + pid_m * C_IN + cols, tl.sum(gf, axis=0), mask=col_ok)
        tl.store(part_gx_ptr + pid_m * C_IN + cols, tl.sum(gf * xc, axis=0), mask=col_ok)
    else:
        tl.store(g_ptr + offs, acc.to(g_ptr.dtype.element_ty), mask=out_mask)


def conv_dgrad(dz: Tensor, weight: Tensor, input_size: tuple[int, int], stride=1, padding=0, *,
               y: Optional[Tensor] = None, coef_a: Optional[Tensor] = None, coef_b: Optional[Tensor] = None,
               coef_c: Optional[Tensor] = None, x_prev: Optional[Tensor] = None,
               scale_prev: Optional[Tensor] = None, shift_prev: Optional[Tensor] = None,
               mean_prev: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(g, sum_g, sum_gx): the gradient through conv2d(a, weight, stride, padding) back to a, and further
    through the producer's ReLU when the producer is given.

    dz: (N, C_out, OH, OW) channels_last. With ``y``, ``coef_a``, ``coef_b``, ``coef_c`` (this convolution's
    raw output y and the consumer BN's backward coefficients, (C_out,) float32), the gradient at y is formed
    on the fly as dy = A * dz + B * y + C with the standard BN backward coefficients (M = N*OH*OW values per
    channel, xhat = (y - mean) * invstd, dgamma = sum dz * xhat, dbeta = sum dz):

        A = gamma * invstd,   B = -A * invstd * dgamma / M,   C = -A * dbeta / M - B * mean;

    without them dz is the gradient at y. ``input_size``: (H, W) of the convolution's input.
    With ``x_prev``, ``scale_prev``, ``shift_prev``, ``mean_prev`` (the producer's raw output (N, C_in, H, W)
    and its BN's scale, shift and batch mean, (C_in,) float32), g = da * (x_prev * scale_prev + shift_prev > 0)
    is the gradient at the producer BN's output, and sum_g = sum g, sum_gx = sum g * (x_prev - mean_prev)
    ((C_in,) float32, fixed-order sums of the stored g) give that BN's dbeta = sum_g and
    dgamma = invstd_prev * sum_gx; without them g = da and the sums are None.
    g: (N, C_in, H, W) channels_last in dz's dtype.
    """
    op = "conv_dgrad"
    check_activation(op, "dz", dz)
    require(len(tuple(input_size)) == 2, lambda: f"{op}: input_size must be (H, W), got {input_size}")
    h, w = (int(v) for v in input_size)
    check_weight(op, weight, dz)
    geom = check_geometry(op, (dz.shape[0], weight.shape[1], h, w), weight.shape, stride, padding)
    check_shape(op, "dz", dz, (geom.n, geom.c_out, geom.oh, geom.ow))
    bn_args = (y, coef_a, coef_b, coef_c)
    require(all(t is None for t in bn_args) or all(t is not None for t in bn_args),
            lambda: f"{op}: give all of y, coef_a, coef_b, coef_c (the consumer BN's backward), or none")
    bn_prologue = y is not None
    if bn_prologue:
        check_activation(op, "y", y, like=dz)
        check_shape(op, "y", y, dz.shape)
    coefs = [check_vector(op, name, t, geom.c_out, dz.device)
             for name, t in (("coef_a", coef_a), ("coef_b", coef_b), ("coef_c", coef_c))]
    prev_args = (x_prev, scale_prev, shift_prev, mean_prev)
    require(all(t is None for t in prev_args) or all(t is not None for t in prev_args),
            lambda: f"{op}: give all of x_prev, scale_prev, shift_prev, mean_prev (the producer), or none")
    producer = x_prev is not None
    if producer:
        check_activation(op, "x_prev", x_prev, like=dz)
        check_shape(op, "x_prev", x_prev, (geom.n, geom.c_in, h, w))
    prev = [check_vector(op, name, t, geom.c_in, dz.device)
            for name, t in (("scale_prev", scale_prev), ("shift_prev", shift_prev), ("mean_prev", mean_prev))]

    blocks = block_config("dgrad", geom.c_in, geom.c_out, dz.dtype, geom.kh * geom.kw)
    m = geom.input_rows
    tiles = triton.cdiv(m, blocks.block_m)
    g = channels_last_out(dz, geom.n, geom.c_in, h, w)
    part_g = dz.new_empty((tiles if producer else 1, geom.c_in), dtype=torch.float32)
    part_gx = torch.empty_like(part_g)
    dummy = part_g  # stands for the arguments a disabled prologue/epilogue never reads
    launch(_conv_dgrad_kernel)[(triton.cdiv(geom.c_in, blocks.block_n), tiles)](
        dz, y if bn_prologue else dz, *(c if bn_prologue else dummy for c in coefs), weight_krsc(weight),
        x_prev if producer else g, *(p if producer else dummy for p in prev), g, part_g, part_gx,
        m, h, w, geom.c_in, geom.c_out, geom.oh, geom.ow,
        KH=geom.kh, KW=geom.kw, STRIDE=geom.stride, PAD=geom.pad, BN_PROLOGUE=bn_prologue, PRODUCER=producer,
        DOT_FP32=dot_in_fp32(dz.dtype), INPUT_PRECISION=input_precision(dz.dtype),
        BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_K=blocks.block_k,
        num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    if not producer:
        return g, None, None
    sum_g, sum_gx = merge_sum_partials(part_g, part_gx)
    return g, sum_g, sum_gx
