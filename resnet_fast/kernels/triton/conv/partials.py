"""Fixed-order merges of the per-row-tile partials that the convolution epilogues write.

Two merges, one per kind of partial:

  welford   (mean, M2) of each (row tile, channel) of a forward output -> the channel's mean
            and biased variance. Chan's formula: pieces of counts w_i, means m_i and M2_i merge to
            mean = sum w_i m_i / sum w_i and M2 = sum (M2_i + w_i (m_i - mean)^2), so nothing
            is a raw sum of squares (a channel whose |mean| >> std keeps its variance). Row tiles
            are all TILE_M rows but the last, so counts are implied by the tile index, not stored.
  sums      per-tile sums of dgrad's epilogue (sum g, sum g * (x - mean)) -> per-channel sums.

One program per block of channels walks the tiles in order, BLOCK_T at a time: every sum has a
fixed order, so the results are bit for bit repeatable (no atomics). Turning (mean, var) into
invstd, scale/shift and the running statistics is the shared ``bn_finalize`` primitive's job.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import Tensor, launch
from ._common import merge_blocks, require


@triton.jit
def _welford_merge_kernel(
    part_mean_ptr,  # *fp32 (T, C): mean of each (row tile, channel)
    part_m2_ptr,  # *fp32 (T, C): its sum of squared deviations from that mean
    mean_ptr,  # *fp32 (C,) out: channel mean over the M rows
    var_ptr,  # *fp32 (C,) out: channel biased variance (M2 / M)
    M,  # rows in all (sum of the tile counts)
    C,  # channels
    T,  # row tiles
    TILE_M,  # rows per tile (the last tile holds M - (T - 1) * TILE_M)
    BLOCK_T: tl.constexpr,  # tiles merged per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    run_mean = tl.zeros([BLOCK_C], tl.float32)
    run_m2 = tl.zeros([BLOCK_C], tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_ok = ts < T
        w = tl.where(t_ok, tl.minimum(TILE_M, M - ts * TILE_M), 0).to(tl.float32)[:, None]
        mask = t_ok[:, None] & c_ok[None, :]
        offs = ts[:, None] * C + cs[None, :]
        p_mean = tl.load(part_mean_ptr + offs, mask=mask, other=0.0)
        p_m2 = tl.load(part_m2_ptr + offs, mask=mask, other=0.0)
        chunk = tl.sum(w, axis=0)  # (1,): rows in these tiles
        chunk_mean = tl.sum(p_mean * w, axis=0) / chunk
        dev = p_mean - chunk_mean[None, :]
        chunk_m2 = tl.sum(p_m2 + w * dev * dev, axis=0)  # masked tiles have w = 0
        before = tl.full([], 0.0, tl.float32) + t0 * TILE_M  # the tiles before t0 are full
        frac = chunk / (before + chunk)
        delta = chunk_mean - run_mean
        run_mean += delta * frac
        run_m2 += chunk_m2 + delta * delta * (before * frac)
    tl.store(mean_ptr + cs, run_mean, mask=c_ok)
    tl.store(var_ptr + cs, run_m2 / (tl.full([], 0.0, tl.float32) + M), mask=c_ok)


def merge_welford_partials(part_mean: Tensor, part_m2: Tensor, rows: int, tile_rows: int) -> tuple[Tensor, Tensor]:
    """(mean, biased var), each (C,) fp32, of ``rows`` values per channel given per-tile (mean, M2) of (T, C)."""
    t, c = part_mean.shape
    require(t == triton.cdiv(rows, tile_rows),
            lambda: f"merge_welford_partials: {t} tiles for {rows} rows of {tile_rows}")
    mean = part_mean.new_empty((c,))
    var = part_mean.new_empty((c,))
    block_t, block_c = merge_blocks()
    launch(_welford_merge_kernel)[(triton.cdiv(c, block_c),)](
        part_mean, part_m2, mean, var, rows, c, t, tile_rows, BLOCK_T=block_t, BLOCK_C=block_c)
    return mean, var


@triton.jit
def _sum_merge_kernel(
    part_a_ptr,  # *fp32 (T, C): first per-tile sum (dgrad: sum g)
    part_b_ptr,  # *fp32 (T, C): second per-tile sum (dgrad: sum g * (x - mean))
    sum_a_ptr,  # *fp32 (C,) out: sum over tiles of part_a
    sum_b_ptr,  # *fp32 (C,) out: sum over tiles of part_b
    C,  # channels
    T,  # tiles
    BLOCK_T: tl.constexpr,  # tiles added per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    acc_a = tl.zeros([BLOCK_C], tl.float32)
    acc_b = tl.zeros([BLOCK_C], tl.float32)
    for t0 in range(0, T, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        mask = (ts < T)[:, None] & c_ok[None, :]
        offs = ts[:, None] * C + cs[None, :]
        acc_a += tl.sum(tl.load(part_a_ptr + offs, mask=mask, other=0.0), axis=0)
        acc_b += tl.sum(tl.load(part_b_ptr + offs, mask=mask, other=0.0), axis=0)
    tl.store(sum_a_ptr + cs, acc_a, mask=c_ok)
    tl.store(sum_b_ptr + cs, acc_b, mask=c_ok)


def merge_sum_partials(part_a: Tensor, part_b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel sums over the tiles of two (T, C) fp32 partial arrays, in a fixed order."""
    t, c = part_a.shape
    sum_a = part_a.new_empty((c,))
    sum_b = part_a.new_empty((c,))
    block_t, block_c = merge_blocks()
    launch(_sum_merge_kernel)[(triton.cdiv(c, block_c),)](
        part_a, part_b, sum_a, sum_b, c, t, BLOCK_T=block_t, BLOCK_C=block_c)
    return sum_a, sum_b
