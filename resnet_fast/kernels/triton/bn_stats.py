"""bn_stats: per-channel mean and biased variance of y over (N, H, W), and per-(n, c) means over (H, W).

Three-stage split reduction, deterministic (no atomics: every sum has a fixed order):

  stage 1  one program per (split of H*W, block of channels, sample n): Welford per lane
           over its split, lanes merged with Chan's formula -> (mean, M2) per (n, split, c)
  stage 2  one program per (block of channels, block of BLOCK_N samples): merges the splits
           of each sample (its sample_mean), then the block's samples, Chan's formula again
           -> (mean, M2) per (sample block, c)
  stage 3  one program per block of channels: merges the sample blocks in order (the
           channel's mean and variance).
Every piece of a merge has a known count (H*W is cut in equal splits, the batch in equal
sample blocks, the last of each shorter), so counts are never stored. Stages 2 and 3 used to
be one kernel of ceil(C / 32) programs looping over the whole batch (2 programs at C = 64):
now the batch is spread over ceil(N / BLOCK_N) times as many programs, and what is left in
order is a loop over N / BLOCK_N rows of C values.

All statistics are centered (Welford/Chan): no sum of squares, so a channel whose
|mean| is far larger than its standard deviation keeps its variance.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...ops import primitives
from . import _launch, _tiles
from ._common import (Tensor, acc_dtype, channels_contiguous, check_activation, check_device, export, hw_split,
                      merge_block, nchw_vec, require, standard, vec_strides)


@triton.jit
def _bn_stats_partial_kernel(
    y_ptr,  # *T (N, C, H, W) input, NCHW or channels_last
    part_ptr,  # *ACC (2, N, S, C) out: [0] mean of each (sample, split, channel) piece, [1] its sum of squared
    #            deviations from that mean (M2); one workspace, one allocation
    C,  # channels
    HW,  # H * W
    HW_PER_SPLIT,  # positions per split; the last split holds HW - (S - 1) * HW_PER_SPLIT
    stride_n,  # y's stride of n
    stride_c,  # y's stride of c
    stride_hw,  # y's stride of the collapsed hw = h * W + w
    BLOCK_C: tl.constexpr,  # channels per tile
    BLOCK_HW: tl.constexpr,  # positions per tile
    VEC: tl.constexpr,  # HW and the n, c strides arrive divided by VEC (NCHW rows VEC-aligned: _common.nchw_vec)
):
    """Stage 1. Moves N*C*H*W*sizeof(T) bytes in (each input element once), 2*N*S*C*sizeof(ACC) out.

    Each lane (c, j) of the [BLOCK_C, BLOCK_HW] tile runs Welford over positions j,
    j + BLOCK_HW, ... of the split; the full tiles need no hw mask (16-byte loads along a
    unit-stride hw), the one partial tile at the end is masked.
    """
    HW, stride_n, stride_c = HW * VEC, stride_n * VEC, stride_c * VEC
    split = tl.program_id(0)
    c_block = tl.program_id(1)
    n = tl.program_id(2)
    num_splits = tl.num_programs(0)
    ACC = part_ptr.dtype.element_ty
    cs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    lanes = tl.arange(0, BLOCK_HW)
    start = split * HW_PER_SPLIT
    count = tl.minimum(HW_PER_SPLIT, HW - start)
    full_tiles = count // BLOCK_HW
    ptrs = y_ptr + n.to(tl.int64) * stride_n + cs[:, None] * stride_c + (start + lanes)[None, :] * stride_hw

    mean = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    m2 = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for k in range(0, full_tiles):  # every lane sees its (k+1)-th value
        x = tl.load(ptrs, mask=c_mask[:, None], other=0.0).to(ACC)
        delta = x - mean
        mean += delta * (tl.full([], 1.0, ACC) / (k + 1))
        m2 += delta * (x - mean)
        ptrs += BLOCK_HW * stride_hw
    tail = lanes < count - full_tiles * BLOCK_HW
    x = tl.load(ptrs, mask=c_mask[:, None] & tail[None, :], other=0.0).to(ACC)
    lane_count = (full_tiles + tail.to(tl.int32)).to(ACC)  # values each lane has seen
    delta = tl.where(tail[None, :], x - mean, 0.0)
    mean += delta / tl.maximum(lane_count, 1.0)[None, :]
    m2 += delta * (x - mean)

    # Chan merge of the BLOCK_HW lanes: mean = sum(w * mean_j) / sum(w), M2 = sum(M2_j + w * (mean_j - mean)^2).
    piece_mean = tl.sum(mean * lane_count[None, :], axis=1) / count.to(ACC)
    dev = mean - piece_mean[:, None]
    piece_m2 = tl.sum(m2 + lane_count[None, :] * dev * dev, axis=1)
    out = (n * num_splits + split) * C + cs
    tl.store(part_ptr + out, piece_mean, mask=c_mask)
    tl.store(part_ptr + tl.num_programs(2) * num_splits * C + out, piece_m2, mask=c_mask)


@triton.jit
def _bn_stats_merge_kernel(
    part_ptr,  # *ACC (2, N, S, C): stage 1's piece means and M2
    sample_mean_ptr,  # *ACC (N, C) out: mean over (H, W) per (n, c)
    block_ptr,  # *ACC (2, NB, C) out: mean over this program's samples and (H, W), NB = ceil(N / BLOCK_N); its M2
    N,  # samples
    C,  # channels
    HW,  # H * W: values per (n, c)
    NUM_SPLITS,  # S
    HW_PER_SPLIT,  # values per piece (the last split of each sample has fewer)
    BLOCK_N: tl.constexpr,  # samples per program
    BLOCK_S: tl.constexpr,  # splits per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    """Stage 2, one program per (block of channels, block of BLOCK_N samples): merges each sample's splits
    (its sample_mean), then the block's samples. Moves 2*N*S*C*sizeof(ACC) bytes in, (N + 2*NB)*C out."""
    ACC = block_ptr.dtype.element_ty
    part_mean_ptr = part_ptr
    part_m2_ptr = part_ptr + N * NUM_SPLITS * C
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    n_block = tl.program_id(1)
    ns = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    mean = tl.zeros([BLOCK_N, BLOCK_C], ACC)  # of the sample's splits merged so far
    m2 = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    for s0 in range(0, NUM_SPLITS, BLOCK_S):
        ss = s0 + tl.arange(0, BLOCK_S)
        s_mask = ss < NUM_SPLITS
        offs = (ns[:, None, None] * NUM_SPLITS + ss[None, :, None]) * C + cs[None, None, :]
        mask = n_mask[:, None, None] & s_mask[None, :, None] & c_mask[None, None, :]
        p_mean = tl.load(part_mean_ptr + offs, mask=mask, other=0.0)
        p_m2 = tl.load(part_m2_ptr + offs, mask=mask, other=0.0)
        w = tl.where(s_mask, tl.minimum(HW_PER_SPLIT, HW - ss * HW_PER_SPLIT), 0).to(ACC)[None, :, None]
        chunk = tl.sum(w, axis=1)  # (1, 1): values in these splits
        chunk_mean = tl.sum(p_mean * w, axis=1) / chunk
        dev = p_mean - chunk_mean[:, None, :]
        chunk_m2 = tl.sum(p_m2 + w * dev * dev, axis=1)
        before = tl.full([], 0.0, ACC) + s0 * HW_PER_SPLIT  # the splits before s0 are full
        delta = chunk_mean - mean
        mean += delta * (chunk / (before + chunk))
        m2 += chunk_m2 + delta * delta * (before * chunk / (before + chunk))
    tl.store(sample_mean_ptr + ns[:, None] * C + cs[None, :], mean, mask=n_mask[:, None] & c_mask[None, :])

    # Merge the block's samples (HW values each): equal weights, so a plain mean and the spread of the means.
    valid = tl.minimum(BLOCK_N, N - n_block * BLOCK_N)
    block_mean = tl.sum(mean, axis=0) / valid  # masked samples hold zeros
    dev = tl.where(n_mask[:, None], mean - block_mean[None, :], 0.0)
    block_m2 = tl.sum(m2, axis=0) + HW * tl.sum(dev * dev, axis=0)
    tl.store(block_ptr + n_block * C + cs, block_mean, mask=c_mask)
    tl.store(block_ptr + tl.num_programs(1) * C + n_block * C + cs, block_m2, mask=c_mask)


@triton.jit
def _bn_stats_combine_kernel(
    block_ptr,  # *ACC (2, NB, C): stage 2's block means and M2
    mean_ptr,  # *ACC (C,) out: channel mean over (N, H, W)
    var_ptr,  # *ACC (C,) out: channel biased variance
    N,  # samples
    C,  # channels
    HW,  # H * W
    NUM_BLOCKS,  # NB
    SAMPLES_PER_BLOCK,  # stage 2's BLOCK_N (the last block holds N - (NB - 1) * BLOCK_N samples)
    BLOCK_B: tl.constexpr,  # sample blocks merged per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    """Stage 3, one program per block of channels: the sample blocks merged in order, BLOCK_B at a time
    (Chan's formula over the step's blocks, then into the running statistics). Moves 2*NB*C in, 2*C out."""
    ACC = mean_ptr.dtype.element_ty
    block_mean_ptr = block_ptr
    block_m2_ptr = block_ptr + NUM_BLOCKS * C
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    run_mean = tl.zeros([BLOCK_C], ACC)
    run_m2 = tl.zeros([BLOCK_C], ACC)
    for b0 in range(0, NUM_BLOCKS, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < NUM_BLOCKS
        offs = bs[:, None] * C + cs[None, :]
        mask = b_mask[:, None] & c_mask[None, :]
        p_mean = tl.load(block_mean_ptr + offs, mask=mask, other=0.0)
        p_m2 = tl.load(block_m2_ptr + offs, mask=mask, other=0.0)
        w = tl.where(b_mask, tl.minimum(SAMPLES_PER_BLOCK, N - bs * SAMPLES_PER_BLOCK), 0).to(ACC) * HW
        chunk = tl.sum(w, axis=0)  # values in these blocks
        chunk_mean = tl.sum(p_mean * w[:, None], axis=0) / chunk
        dev = p_mean - chunk_mean[None, :]
        chunk_m2 = tl.sum(p_m2 + w[:, None] * dev * dev, axis=0)
        before = (b0 * SAMPLES_PER_BLOCK).to(ACC) * HW  # the blocks before b0 are full
        delta = chunk_mean - run_mean
        run_mean += delta * (chunk / (before + chunk))
        run_m2 += chunk_m2 + delta * delta * (before * chunk / (before + chunk))
    tl.store(mean_ptr + cs, run_mean, mask=c_mask)
    tl.store(var_ptr + cs, run_m2 / ((tl.full([], 0.0, ACC) + N) * HW), mask=c_mask)


_PLANS = _launch.plan_cache()


class _Plan(_launch.Plan):
    """bn_stats's launches for one input signature: stage 1 over (split, channel block, sample), the merge
    over (channel block, sample block), the combine over channel blocks."""

    __slots__ = ("n", "c", "splits", "blocks", "acc", "partial", "merge", "combine")

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, c, acc = self.n, self.c, self.acc
        mean = y.new_empty((c,), dtype=acc)
        var = y.new_empty((c,), dtype=acc)
        sample_mean = y.new_empty((n, c), dtype=acc)
        part = y.new_empty((2, n, self.splits, c), dtype=acc)
        blocks = y.new_empty((2, self.blocks, c), dtype=acc)
        with self.guard(y):
            self.partial(y, part)
            self.merge(part, sample_mean, blocks)
            self.combine(blocks, mean, var)
        return mean, var, sample_mean


def bn_stats_launcher(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (C,), biased var (C,), sample_mean (N, C)) of y over (N, H, W), in y's accumulation dtype."""
    eager = _launch.eager(y)
    if eager:
        plan = _PLANS.get(_launch.signature(y))
        if plan is not None:  # inputs of a signature checked and planned before
            return plan(y)
    check_activation("bn_stats", "y", y)
    check_device("bn_stats", y)
    key = _launch.signature(y) if eager else None
    y = standard(y)
    n, c, h, w = y.shape
    if y.numel() == 0:  # empty reductions (NaN means): nothing to launch
        return primitives.bn_stats(y)
    require(n <= 65535, lambda: f"bn_stats (triton): batch {n} exceeds the grid's 65535 limit")
    channels_last = channels_contiguous(y)
    tile = _tiles.pick("bn_stats_partial", y.dtype, channels_last, {}, c, h * w)
    merge = _tiles.pick("bn_stats_merge", y.dtype, channels_last, {}, c, h * w)
    combine = _tiles.pick("bn_stats_combine", y.dtype, channels_last, {}, c, h * w)
    splits, hw_per_split = hw_split(y, tile.block_c)
    blocks = triton.cdiv(n, merge.block_n)
    plan = _Plan(y, direct=eager)
    plan.n, plan.c, plan.splits, plan.blocks, plan.acc = n, c, splits, blocks, acc_dtype(y.dtype)
    vec = nchw_vec(y)
    plan.partial = _launch.KernelLaunch(
        _bn_stats_partial_kernel, (splits, triton.cdiv(c, tile.block_c), n),
        (c, h * w // vec, hw_per_split, *vec_strides(y, vec)),
        dict(BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, VEC=vec, num_warps=tile.num_warps), traced=not eager)
    plan.merge = _launch.KernelLaunch(
        _bn_stats_merge_kernel, (triton.cdiv(c, merge.block_c), blocks), (n, c, h * w, splits, hw_per_split),
        dict(BLOCK_N=merge.block_n, BLOCK_S=merge_block(splits), BLOCK_C=merge.block_c, num_warps=merge.num_warps),
        traced=not eager)
    plan.combine = _launch.KernelLaunch(
        _bn_stats_combine_kernel, (triton.cdiv(c, combine.block_c),), (n, c, h * w, blocks, merge.block_n),
        dict(BLOCK_B=combine.block_n, BLOCK_C=combine.block_c, num_warps=combine.num_warps), traced=not eager)
    if eager and key == _launch.signature(y):  # no layout copy: later calls of this signature reuse the plan
        _launch.remember(_PLANS, key, plan)
    return plan(y)


bn_stats = export("bn_stats", bn_stats_launcher)
