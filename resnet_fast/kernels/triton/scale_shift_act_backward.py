"""Backward of scale_shift_act: the per-(n, c) reductions, then the elementwise gradients.

Forward (per sample n, channel c, position hw):

    z   = y * scale[n, c] + shift[n, c] + R,   R = residual * res_scale[c] + res_shift[c], residual, or 0
    out = relu(z)  (or z)

Backward. With g = dout * (z > 0) (or dout without relu), z recomputed from y (and the
residual) instead of being stored, and BN's y = conv output, mean mu, invstd s,
a = gamma * s, M = N*H*W values per channel (resnet_fast/ops/_bn.py has the full story):

    d gamma = s * sum g * (y - mu),   d beta = sum g
    dy      = a * (g - d beta / M - (y - mu) * s^2 * sum g * (y - mu) / M)
            = k_g[n, c] * g + k_0[n, c] + k_y[c] * (y - mu)

so the backward needs two per-(n, c) sums over (H, W), then one elementwise pass with
per-(n, c)/per-channel coefficients the host computes from those sums (Squeeze-Excitation
adds its gate into k_g and its squeeze gradient into k_0; a batch-normalized residual
(mu_r) needs sum g * (residual - mu_r) over (n, hw) as well):

    reduce:  sum_g[n, c] = sum_hw g,   sum_g_y[n, c] = sum_hw g * (y - center[c]),
             sum_g_res[c] = sum_{n, hw} g * (residual - res_center[c])
    apply:   grad_y        = k_g[n, c] * g + k_0[n, c] + k_y[c] * (y - center[c])
             grad_residual = res_k_g[c] * g + res_k_0[c] + res_k_r[c] * (residual - res_center[c])

Centering on the batch mean keeps sum g * (y - mu) free of cancellation. The reduction
is split in stages like bn_stats (partial sums per (n, split of H*W, c); a merge per
(block of channels, block of samples) into the per-sample sums; for the residual's sums, a
combine of the sample blocks in order): deterministic, no atomics.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _launch, _tiles
from ._common import (Tensor, acc_dtype, channels_contiguous, check_activation, check_device, coefficient, export,
                      hw_split, merge_block, nchw_vec, relu_grad, require, standard, vec_strides)
from .scale_shift_act import elementwise_grid


# ----------------------------------------------------------------------------- reduce
@triton.jit
def _reduce_tile(acc_g, acc_gy, acc_gr, grad_ptrs, y_ptrs, r_ptrs, mask, scale, shift, res_scale, res_shift, center,
                 res_center, HAS_RES: tl.constexpr, RES_AFFINE: tl.constexpr, RELU: tl.constexpr,
                 RES_SUM: tl.constexpr):
    """Add one tile's g, g * (y - center) and g * (residual - res_center) to the per-lane sums."""
    g = tl.load(grad_ptrs, mask=mask, other=0.0).to(acc_g.dtype)
    y = tl.load(y_ptrs, mask=mask, other=0.0).to(acc_g.dtype)
    r = y
    if HAS_RES and (RELU or RES_SUM):
        r = tl.load(r_ptrs, mask=mask, other=0.0).to(acc_g.dtype)
    g = relu_grad(g, y, r, scale, shift, res_scale, res_shift, HAS_RES, RES_AFFINE, RELU)
    acc_g += g
    acc_gy += g * (y - center[:, None])
    if RES_SUM:
        acc_gr += g * (r - res_center[:, None])
    return acc_g, acc_gy, acc_gr


@triton.jit
def _ssa_bwd_reduce_partial_kernel(
    grad_ptr,  # *T (N, C, H, W) dout, NCHW or channels_last
    y_ptr,  # *T (N, C, H, W) forward input y
    res_ptr,  # *T (N, C, H, W) forward residual (read when HAS_RES and (RELU or RES_SUM))
    scale_ptr,  # *ACC (N, C): forward factor of y (for the relu mask)
    shift_ptr,  # *ACC (N, C): forward addend
    res_scale_ptr,  # *ACC (C,): forward factor of the residual (when RES_AFFINE)
    res_shift_ptr,  # *ACC (C,): forward addend of the residual (when RES_AFFINE)
    center_ptr,  # *ACC (C,): subtracted from y in sum g * (y - center)
    res_center_ptr,  # *ACC (C,): subtracted from the residual (when RES_SUM)
    part_ptr,  # *ACC (2 + RES_SUM, N, S, C) out: sums of g, g * (y - center) [, g * (residual - res_center)] per
    #            (sample, split, channel); one workspace, one allocation
    C,  # channels
    HW,  # H * W
    HW_PER_SPLIT,  # positions per split; the last split holds HW - (S - 1) * HW_PER_SPLIT
    stride_yn,  # y's stride of n
    stride_yc,  # y's stride of c
    stride_yhw,  # y's stride of the collapsed hw = h * W + w
    stride_gn,  # dout's stride of n
    stride_gc,  # dout's stride of c
    stride_ghw,  # dout's stride of hw
    stride_rn,  # residual's stride of n
    stride_rc,  # residual's stride of c
    stride_rhw,  # residual's stride of hw
    HAS_RES: tl.constexpr,  # the forward added a residual
    RES_AFFINE: tl.constexpr,  # ... transformed by res_scale, res_shift
    RELU: tl.constexpr,  # the forward applied relu
    RES_SUM: tl.constexpr,  # compute the residual sum (res_center given)
    BLOCK_C: tl.constexpr,  # channels per tile
    BLOCK_HW: tl.constexpr,  # positions per tile
    VEC: tl.constexpr,  # HW and the n, c strides arrive divided by VEC (NCHW rows VEC-aligned: _common.nchw_vec)
    STAGES: tl.constexpr,  # software-pipelining depth of the loop over full tiles (1: none; _tiles.rule)
):
    """Stage 1. Moves (2 + READ_RES) * N*C*H*W*sizeof(T) bytes in (dout, y [, residual], each element
    once; READ_RES = HAS_RES and (RELU or RES_SUM)), (2 + RES_SUM)*N*S*C*sizeof(ACC) out."""
    HW, stride_yn, stride_yc = HW * VEC, stride_yn * VEC, stride_yc * VEC
    stride_gn, stride_gc, stride_rn, stride_rc = stride_gn * VEC, stride_gc * VEC, stride_rn * VEC, stride_rc * VEC
    split = tl.program_id(0)
    c_block = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    num_splits = tl.num_programs(0)
    ACC = part_ptr.dtype.element_ty
    cs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    lanes = tl.arange(0, BLOCK_HW)
    start = split * HW_PER_SPLIT
    count = tl.minimum(HW_PER_SPLIT, HW - start)
    full_tiles = count // BLOCK_HW
    scale = tl.load(scale_ptr + n * C + cs, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + n * C + cs, mask=c_mask, other=0.0)
    center = tl.load(center_ptr + cs, mask=c_mask, other=0.0)
    res_scale = scale
    res_shift = shift
    res_center = center
    if RES_AFFINE:
        res_scale = tl.load(res_scale_ptr + cs, mask=c_mask, other=0.0)
        res_shift = tl.load(res_shift_ptr + cs, mask=c_mask, other=0.0)
    if RES_SUM:
        res_center = tl.load(res_center_ptr + cs, mask=c_mask, other=0.0)
    hws = (start + lanes)[None, :]
    y_ptrs = y_ptr + n * stride_yn + cs[:, None] * stride_yc + hws * stride_yhw
    grad_ptrs = grad_ptr + n * stride_gn + cs[:, None] * stride_gc + hws * stride_ghw
    r_ptrs = res_ptr + n * stride_rn + cs[:, None] * stride_rc + hws * stride_rhw

    acc_g = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    acc_gy = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    acc_gr = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for _ in tl.range(0, full_tiles, num_stages=STAGES):  # no hw mask: 16-byte loads along a unit-stride hw
        acc_g, acc_gy, acc_gr = _reduce_tile(acc_g, acc_gy, acc_gr, grad_ptrs, y_ptrs, r_ptrs, c_mask[:, None],
                                             scale, shift, res_scale, res_shift, center, res_center,
                                             HAS_RES, RES_AFFINE, RELU, RES_SUM)
        y_ptrs += BLOCK_HW * stride_yhw
        grad_ptrs += BLOCK_HW * stride_ghw
        r_ptrs += BLOCK_HW * stride_rhw
    tail = c_mask[:, None] & (lanes < count - full_tiles * BLOCK_HW)[None, :]
    acc_g, acc_gy, acc_gr = _reduce_tile(acc_g, acc_gy, acc_gr, grad_ptrs, y_ptrs, r_ptrs, tail,
                                         scale, shift, res_scale, res_shift, center, res_center,
                                         HAS_RES, RES_AFFINE, RELU, RES_SUM)
    out = (n * num_splits + split) * C + cs
    plane = tl.num_programs(2) * num_splits * C
    tl.store(part_ptr + out, tl.sum(acc_g, axis=1), mask=c_mask)
    tl.store(part_ptr + plane + out, tl.sum(acc_gy, axis=1), mask=c_mask)
    if RES_SUM:
        tl.store(part_ptr + 2 * plane + out, tl.sum(acc_gr, axis=1), mask=c_mask)


@triton.jit
def _ssa_bwd_reduce_merge_kernel(
    part_ptr,  # *ACC (2 + RES_SUM, N, S, C): stage 1's sums
    sum_g_ptr,  # *ACC (N, C) out
    sum_g_y_ptr,  # *ACC (N, C) out
    block_gr_ptr,  # *ACC (NB, C) out: the residual sums of this program's samples (when RES_SUM)
    N,  # samples
    C,  # channels
    NUM_SPLITS,  # S
    RES_SUM: tl.constexpr,  # reduce the residual sums too
    BLOCK_N: tl.constexpr,  # samples per program
    BLOCK_S: tl.constexpr,  # splits per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    """Stage 2, one program per (block of channels, block of BLOCK_N samples): the splits of each sample
    summed in order. Moves (2 + RES_SUM)*N*S*C*sizeof(ACC) bytes in, 2*N*C (+ NB*C) out."""
    ACC = sum_g_ptr.dtype.element_ty
    part_g_ptr = part_ptr
    part_gy_ptr = part_ptr + N * NUM_SPLITS * C
    part_gr_ptr = part_ptr + 2 * N * NUM_SPLITS * C
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    n_block = tl.program_id(1)
    ns = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    sum_g = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    sum_gy = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    block_gr = tl.zeros([BLOCK_C], ACC)
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        offs = (ns[:, None, None] * NUM_SPLITS + ss[None, :, None]) * C + cs[None, None, :]
        mask = n_mask[:, None, None] & (ss < NUM_SPLITS)[None, :, None] & c_mask[None, None, :]
        sum_g += tl.sum(tl.load(part_g_ptr + offs, mask=mask, other=0.0), axis=1)
        sum_gy += tl.sum(tl.load(part_gy_ptr + offs, mask=mask, other=0.0), axis=1)
        if RES_SUM:
            block_gr += tl.sum(tl.sum(tl.load(part_gr_ptr + offs, mask=mask, other=0.0), axis=1), axis=0)
    out = ns[:, None] * C + cs[None, :]
    out_mask = n_mask[:, None] & c_mask[None, :]
    tl.store(sum_g_ptr + out, sum_g, mask=out_mask)
    tl.store(sum_g_y_ptr + out, sum_gy, mask=out_mask)
    if RES_SUM:
        tl.store(block_gr_ptr + n_block * C + cs, block_gr, mask=c_mask)


@triton.jit
def _ssa_bwd_reduce_combine_kernel(
    block_gr_ptr,  # *ACC (NB, C): stage 2's residual sums per sample block
    sum_g_res_ptr,  # *ACC (C,) out
    C,  # channels
    NUM_BLOCKS,  # NB
    BLOCK_B: tl.constexpr,  # sample blocks summed per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    """Stage 3 (RES_SUM only), one program per block of channels: the sample blocks summed in order."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    total = tl.zeros([BLOCK_C], sum_g_res_ptr.dtype.element_ty)
    for b0 in range(0, NUM_BLOCKS, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        mask = (bs < NUM_BLOCKS)[:, None] & c_mask[None, :]
        total += tl.sum(tl.load(block_gr_ptr + bs[:, None] * C + cs[None, :], mask=mask, other=0.0), axis=0)
    tl.store(sum_g_res_ptr + cs, total, mask=c_mask)


_REDUCE_PLANS = _launch.plan_cache()
_APPLY_PLANS = _launch.plan_cache()
_sig = _launch.signature


class _ReducePlan(_launch.Plan):
    """The backward reduce's launches for one input signature: stage 1, then the merge."""

    __slots__ = ("n", "c", "splits", "blocks", "acc", "res_sum", "partial", "merge", "combine")

    def __call__(self, grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center):
        n, c, acc = self.n, self.c, self.acc
        sum_g = y.new_empty((n, c), dtype=acc)
        sum_g_y = y.new_empty((n, c), dtype=acc)
        part = y.new_empty((3 if self.res_sum else 2, n, self.splits, c), dtype=acc)
        if self.res_sum:
            sum_g_res = y.new_empty((c,), dtype=acc)
            block_gr = y.new_empty((self.blocks, c), dtype=acc)
        else:  # not written: stand-ins for the absent pointers
            sum_g_res = y.new_empty((0,), dtype=acc)
            block_gr, res_center = sum_g, center
        with self.guard(y):
            self.partial(grad_out, y, residual if residual is not None else y, scale, shift,
                         res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift,
                         center, res_center, part)
            self.merge(part, sum_g, sum_g_y, block_gr)
            if self.res_sum:
                self.combine(block_gr, sum_g_res)
        return sum_g, sum_g_y, sum_g_res


def scale_shift_act_backward_reduce_launcher(
        grad_out: Tensor, y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
        res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool, center: Tensor,
        res_center: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(sum_g (N, C), sum_g_y (N, C), sum_g_res (C,) or empty), see the module docstring."""
    eager = _launch.eager(y)
    if eager:
        key = (_sig(grad_out), _sig(y), _sig(scale), _sig(shift), _sig(residual), _sig(res_scale), _sig(res_shift),
               relu, _sig(center), _sig(res_center))
        plan = _REDUCE_PLANS.get(key)
        if plan is not None:  # inputs of a signature checked and planned before
            return plan(grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center)
    inputs = (grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center)
    op = "scale_shift_act_backward_reduce"
    y, grad_out, residual, coefs = _check_inputs(op, grad_out, y, scale, shift, residual, res_scale, res_shift)
    n, c, h, w = y.shape
    center = coefficient(op, "center", center, (c,), y)
    res_center = coefficient(op, "res_center", res_center, (c,), y)
    require(res_center is None or residual is not None, lambda: f"{op}: res_center given without a residual")
    acc = acc_dtype(y.dtype)
    if y.numel() == 0:  # sums over nothing
        return (y.new_zeros((n, c), dtype=acc), y.new_zeros((n, c), dtype=acc),
                y.new_zeros((c,) if res_center is not None else (0,), dtype=acc))

    channels_last = channels_contiguous(y)
    flags = dict(HAS_RES=residual is not None, RES_AFFINE=res_scale is not None, RELU=relu,
                 RES_SUM=res_center is not None)
    tile = _tiles.pick("ssa_bwd_reduce_partial", y.dtype, channels_last, flags, c, h * w)
    merge = _tiles.pick("ssa_bwd_reduce_merge", y.dtype, channels_last, dict(RES_SUM=flags["RES_SUM"]), c, h * w)
    combine = _tiles.pick("ssa_bwd_reduce_combine", y.dtype, channels_last, {}, c, h * w)
    splits, hw_per_split = hw_split(y, tile.block_c)
    blocks = triton.cdiv(n, merge.block_n)
    plan = _ReducePlan(y, direct=eager)
    plan.n, plan.c, plan.splits, plan.blocks, plan.acc, plan.res_sum = n, c, splits, blocks, acc, res_center is not None
    vec = nchw_vec(y, grad_out, residual)
    plan.partial = _launch.KernelLaunch(
        _ssa_bwd_reduce_partial_kernel, (splits, triton.cdiv(c, tile.block_c), n),
        (c, h * w // vec, hw_per_split, *vec_strides(y, vec), *vec_strides(grad_out, vec), *vec_strides(residual, vec)),
        dict(**flags, BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, VEC=vec, STAGES=tile.num_stages,
             num_warps=tile.num_warps), traced=not eager)
    plan.merge = _launch.KernelLaunch(
        _ssa_bwd_reduce_merge_kernel, (triton.cdiv(c, merge.block_c), blocks), (n, c, splits),
        dict(RES_SUM=res_center is not None, BLOCK_N=merge.block_n, BLOCK_S=merge_block(splits),
             BLOCK_C=merge.block_c, num_warps=merge.num_warps), traced=not eager)
    plan.combine = _launch.KernelLaunch(
        _ssa_bwd_reduce_combine_kernel, (triton.cdiv(c, combine.block_c),), (c, blocks),
        dict(BLOCK_B=combine.block_n, BLOCK_C=combine.block_c, num_warps=combine.num_warps), traced=not eager)
    res_scale, res_shift = (coefs[2], coefs[3]) if res_scale is not None else (None, None)
    args = (grad_out, y, coefs[0], coefs[1], residual, res_scale, res_shift, center, res_center)
    if eager and all(a is b for a, b in zip(inputs, args)):
        _launch.remember(_REDUCE_PLANS, key, plan)  # no copy was needed: later calls of this signature reuse it
    return plan(*args)


# ----------------------------------------------------------------------------- apply
@triton.jit
def _ssa_bwd_apply_kernel(
    grad_ptr,  # *T (N, C, H, W) dout, NCHW or channels_last
    y_ptr,  # *T (N, C, H, W) forward input y
    res_ptr,  # *T (N, C, H, W) forward residual (read when HAS_RES and (RELU or RES_GRAD))
    grad_y_ptr,  # *T (N, C, H, W) out: dy, with y's strides
    grad_res_ptr,  # *T (N, C, H, W) out: d residual, with y's strides (when RES_GRAD)
    scale_ptr,  # *ACC (N, C): forward factor of y (for the relu mask)
    shift_ptr,  # *ACC (N, C): forward addend
    res_scale_ptr,  # *ACC (C,): forward factor of the residual (when RES_AFFINE)
    res_shift_ptr,  # *ACC (C,): forward addend of the residual (when RES_AFFINE)
    k_g_ptr,  # *ACC (N, C): dy's factor of g
    k_0_ptr,  # *ACC (N, C): dy's constant
    k_y_ptr,  # *ACC (C,): dy's factor of (y - center)
    center_ptr,  # *ACC (C,)
    res_k_g_ptr,  # *ACC (C,): d residual's factor of g (when RES_GRAD)
    res_k_0_ptr,  # *ACC (C,): d residual's constant (when RES_GRAD)
    res_k_r_ptr,  # *ACC (C,): d residual's factor of (residual - res_center) (when RES_GRAD)
    res_center_ptr,  # *ACC (C,) (when RES_GRAD)
    C,  # channels
    HW,  # H * W
    stride_yn,  # y's (and the outputs') stride of n
    stride_yc,  # y's stride of c
    stride_yhw,  # y's stride of the collapsed hw = h * W + w
    stride_gn,  # dout's stride of n
    stride_gc,  # dout's stride of c
    stride_ghw,  # dout's stride of hw
    stride_rn,  # residual's stride of n
    stride_rc,  # residual's stride of c
    stride_rhw,  # residual's stride of hw
    HAS_RES: tl.constexpr,  # the forward added a residual
    RES_AFFINE: tl.constexpr,  # ... transformed by res_scale, res_shift
    RELU: tl.constexpr,  # the forward applied relu
    RES_GRAD: tl.constexpr,  # write the residual's gradient (res_k_g given)
    BLOCK_C: tl.constexpr,  # channels per tile
    BLOCK_HW: tl.constexpr,  # positions per tile
    VEC: tl.constexpr,  # HW and the n, c strides arrive divided by VEC (NCHW rows VEC-aligned: _common.nchw_vec)
):
    """Moves (3 + READ_RES + RES_GRAD) * N*C*H*W*sizeof(T) bytes: reads dout, y [, residual], writes dy
    [, d residual]; READ_RES = HAS_RES and (RELU or RES_GRAD). Coefficients come from the caches."""
    HW, stride_yn, stride_yc = HW * VEC, stride_yn * VEC, stride_yc * VEC
    stride_gn, stride_gc, stride_rn, stride_rc = stride_gn * VEC, stride_gc * VEC, stride_rn * VEC, stride_rc * VEC
    hw_block = tl.program_id(0)
    c_block = tl.program_id(1)
    n = tl.program_id(2)
    ACC = k_g_ptr.dtype.element_ty
    cs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    hws = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_mask = cs < C
    mask = c_mask[:, None] & (hws < HW)[None, :]
    n64 = n.to(tl.int64)
    y_offs = n64 * stride_yn + cs[:, None] * stride_yc + hws[None, :] * stride_yhw
    g = tl.load(grad_ptr + n64 * stride_gn + cs[:, None] * stride_gc + hws[None, :] * stride_ghw,
                mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + y_offs, mask=mask, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + n * C + cs, mask=c_mask, other=0.0)
    r = y
    res_scale = scale
    res_shift = shift
    if HAS_RES and (RELU or RES_GRAD):
        r = tl.load(res_ptr + n64 * stride_rn + cs[:, None] * stride_rc + hws[None, :] * stride_rhw,
                    mask=mask, other=0.0).to(ACC)
    if RES_AFFINE and RELU:
        res_scale = tl.load(res_scale_ptr + cs, mask=c_mask, other=0.0)
        res_shift = tl.load(res_shift_ptr + cs, mask=c_mask, other=0.0)
    g = relu_grad(g, y, r, scale, shift, res_scale, res_shift, HAS_RES, RES_AFFINE, RELU)

    k_g = tl.load(k_g_ptr + n * C + cs, mask=c_mask, other=0.0)
    k_0 = tl.load(k_0_ptr + n * C + cs, mask=c_mask, other=0.0)
    k_y = tl.load(k_y_ptr + cs, mask=c_mask, other=0.0)
    center = tl.load(center_ptr + cs, mask=c_mask, other=0.0)
    grad_y = k_g[:, None] * g + k_0[:, None] + k_y[:, None] * (y - center[:, None])
    tl.store(grad_y_ptr + y_offs, grad_y.to(grad_y_ptr.dtype.element_ty), mask=mask)
    if RES_GRAD:
        res_k_g = tl.load(res_k_g_ptr + cs, mask=c_mask, other=0.0)
        res_k_0 = tl.load(res_k_0_ptr + cs, mask=c_mask, other=0.0)
        res_k_r = tl.load(res_k_r_ptr + cs, mask=c_mask, other=0.0)
        res_center = tl.load(res_center_ptr + cs, mask=c_mask, other=0.0)
        grad_r = res_k_g[:, None] * g + res_k_0[:, None] + res_k_r[:, None] * (r - res_center[:, None])
        tl.store(grad_res_ptr + y_offs, grad_r.to(grad_res_ptr.dtype.element_ty), mask=mask)


class _ApplyPlan(_launch.Plan):
    __slots__ = ("res_grad", "apply")

    def __call__(self, grad_out, y, scale, shift, residual, res_scale, res_shift, k_g, k_0, k_y, center, res_k_g,
                 res_k_0, res_k_r, res_center):
        grad_y = torch.empty_like(y)
        if self.res_grad:
            grad_res = torch.empty_like(y)
        else:  # not written: stand-ins for the absent pointers
            grad_res = y.new_empty((0,))
            res_k_g = res_k_0 = res_k_r = res_center = k_y
        with self.guard(y):
            self.apply(grad_out, y, residual if residual is not None else y, grad_y,
                       grad_res if self.res_grad else grad_y, scale, shift,
                       res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift,
                       k_g, k_0, k_y, center, res_k_g, res_k_0, res_k_r, res_center)
        return grad_y, grad_res


def scale_shift_act_backward_apply_launcher(
        grad_out: Tensor, y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
        res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool, k_g: Tensor, k_0: Tensor,
        k_y: Tensor, center: Tensor, res_k_g: Optional[Tensor], res_k_0: Optional[Tensor],
        res_k_r: Optional[Tensor], res_center: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(grad_y, grad_residual or empty), see the module docstring."""
    eager = _launch.eager(y)
    if eager:
        key = (_sig(grad_out), _sig(y), _sig(scale), _sig(shift), _sig(residual), _sig(res_scale), _sig(res_shift),
               relu, _sig(k_g), _sig(k_0), _sig(k_y), _sig(center), _sig(res_k_g), _sig(res_k_0), _sig(res_k_r),
               _sig(res_center))
        plan = _APPLY_PLANS.get(key)
        if plan is not None:  # inputs of a signature checked and planned before
            return plan(grad_out, y, scale, shift, residual, res_scale, res_shift, k_g, k_0, k_y, center, res_k_g,
                        res_k_0, res_k_r, res_center)
    inputs = (grad_out, y, scale, shift, residual, res_scale, res_shift, k_g, k_0, k_y, center, res_k_g, res_k_0,
              res_k_r, res_center)
    op = "scale_shift_act_backward_apply"
    y, grad_out, residual, coefs = _check_inputs(op, grad_out, y, scale, shift, residual, res_scale, res_shift)
    n, c, h, w = y.shape
    k_g = coefficient(op, "k_g", k_g, (n, c), y)
    k_0 = coefficient(op, "k_0", k_0, (n, c), y)
    k_y = coefficient(op, "k_y", k_y, (c,), y)
    center = coefficient(op, "center", center, (c,), y)
    res_k = [coefficient(op, name, t, (c,), y) for name, t in
             (("res_k_g", res_k_g), ("res_k_0", res_k_0), ("res_k_r", res_k_r), ("res_center", res_center))]
    res_grad = res_k[0] is not None
    require(all((t is not None) == res_grad for t in res_k),
                 lambda: f"{op}: res_k_g, res_k_0, res_k_r and res_center must all be given or all None")
    require(not res_grad or residual is not None, lambda: f"{op}: res_k_g given without a residual")
    if y.numel() == 0:
        return torch.empty_like(y), (torch.empty_like(y) if res_grad else y.new_empty((0,)))
    require(torch.empty_like(y).stride() == y.stride(),
                 lambda: f"{op}: empty_like(y) changed the strides")  # the kernel writes with y's strides
    flags = dict(HAS_RES=residual is not None, RES_AFFINE=res_scale is not None, RELU=relu, RES_GRAD=res_grad)
    tile = _tiles.pick("ssa_bwd_apply", y.dtype, channels_contiguous(y), flags, c, h * w)
    plan = _ApplyPlan(y, direct=eager)
    plan.res_grad = res_grad
    vec = nchw_vec(y, grad_out, residual)
    plan.apply = _launch.KernelLaunch(
        _ssa_bwd_apply_kernel, elementwise_grid(n, c, h * w, tile),
        (c, h * w // vec, *vec_strides(y, vec), *vec_strides(grad_out, vec), *vec_strides(residual, vec)),
        dict(**flags, BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, VEC=vec, num_warps=tile.num_warps),
        traced=not eager)
    res_scale, res_shift = (coefs[2], coefs[3]) if res_scale is not None else (None, None)
    args = (grad_out, y, coefs[0], coefs[1], residual, res_scale, res_shift, k_g, k_0, k_y, center, *res_k)
    if eager and all(a is b for a, b in zip(inputs, args)):
        _launch.remember(_APPLY_PLANS, key, plan)  # no copy was needed: later calls of this signature reuse it
    return plan(*args)


def _check_inputs(op, grad_out, y, scale, shift, residual, res_scale, res_shift):
    """Checked (y, grad_out, residual) in standard layouts and the four forward coefficients (absent ones
    replaced by a present one: the kernels never read them)."""
    check_activation(op, "y", y)
    check_activation(op, "grad_out", grad_out, like=y)
    check_device(op, y)
    require((res_scale is None) == (res_shift is None),
                 lambda: f"{op}: res_scale and res_shift must both be given or both None")
    require(res_scale is None or residual is not None, lambda: f"{op}: res_scale given without a residual")
    y, grad_out = standard(y), standard(grad_out)
    if residual is not None:
        check_activation(op, "residual", residual, like=y)
        residual = standard(residual)
    n, c = y.shape[:2]
    scale = coefficient(op, "scale", scale, (n, c), y)
    shift = coefficient(op, "shift", shift, (n, c), y)
    res_scale = coefficient(op, "res_scale", res_scale, (c,), y)
    res_shift = coefficient(op, "res_shift", res_shift, (c,), y)
    coefs = (scale, shift, res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift)
    return y, grad_out, residual, coefs


scale_shift_act_backward_reduce = export("scale_shift_act_backward_reduce", scale_shift_act_backward_reduce_launcher)
scale_shift_act_backward_apply = export("scale_shift_act_backward_apply", scale_shift_act_backward_apply_launcher)
