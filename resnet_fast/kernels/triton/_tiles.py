"""Launch parameters of the Triton primitives: a deterministic rule, optionally overridden by a shipped table.

Why not autotuning: the tile shape and num_warps fix the summation order of the reductions, so a
configuration picked by timing at run time could change the results from run to run and from rank to
rank. Here the parameters are a pure function of everything that changes the kernel: the kernel, the
dtype, the layout, the constexpr flags (HAS_RES, RES_AFFINE, RELU, RES_SUM, RES_GRAD) and the shape (C,
H*W); the results are then bitwise reproducible for a given shape, dtype, layout, Triton version and GPU
architecture (NOTES.md beside this file says what else they depend on). Timing happens only in
``benchmarks/triton_tiles.py``, which writes ``tile_table.json`` here; an entry there (keyed like
``table_key``) replaces the rule's choice for that exact key, and is itself fixed once shipped.

The rule (sizes from the sm_80/sm_90 cubins of tests/test_triton_cubins.py, NOTES.md):
  elementwise  channels_last: BLOCK_C = next_pow2(C) in [32, 256], at most 32 rows, 2048-element tiles
               (512 for fp64), 4 warps: <= 16 (4) elements per thread, 16-byte accesses along c.
               NCHW: BLOCK_HW = next_pow2(H*W) in [64, 1024], 1024-element tiles, 4 warps.
  reduce       stage 1 keeps (2 or 3 accumulators) x its tile in registers: channels_last 64 x 32
               (16 per thread), 64 x 16 for fp64 (the fp64 backward reduce spilled 264-552 bytes at
               64 x 32 on sm_90); NCHW BLOCK_HW = next_pow2(H*W) in [64, 256], 1024-element tiles
               (512 for 2-byte dtypes, 256 for fp64).
               The backward reduce that streams the residual too (3 tensors, 3 accumulators, 6 per-channel
               coefficients) takes half the tile: channels_last 64 x 16 (64 x 8 fp64) with its loop
               software-pipelined two deep (the next tile's loads go to shared memory by cp.async
               while this one is summed: 6-24 KB of shared memory), 90-122 registers instead of
               164-168 (212 fp64 on sm_80); NCHW fp32 512-element tiles, 47-80 instead of 163-168 at 7 x 7.
               The smaller fp64 / 2-byte / 32-channel tiles also avoid the 4-8-byte ptxas spills that
               the full cubin sweep (RESNET_FAST_CUBIN_ALL=1) found at 48-80 registers with the larger
               ones (NOTES.md).
  merge        one program per (32 channels, 8 samples), up to 8 splits per step, 4 warps: 124-128
               registers fp32 (16 samples took 230-246 when the merge looped over the batch); 2 samples
               for fp64 (4 spilled 4 bytes in the backward merge on sm_80, 8 spilled 24-72 bytes before).
  combine      16 sample blocks x 64 channels per step, 4 warps.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch
import triton

from ._common import INTERPRETED

TABLE_PATH = os.path.join(os.path.dirname(__file__), "tile_table.json")

ELEMENTWISE_KERNELS = ("scale_shift_act", "ssa_bwd_apply")
REDUCE_KERNELS = ("bn_stats_partial", "ssa_bwd_reduce_partial")
MERGE_KERNELS = ("bn_stats_merge", "ssa_bwd_reduce_merge")
COMBINE_KERNELS = ("bn_stats_combine", "ssa_bwd_reduce_combine")


class Tile(NamedTuple):
    """BLOCK_C x BLOCK_HW tile (BLOCK_N x BLOCK_C for the merges, BLOCK_B x BLOCK_C for the combines: block_hw
    is then BLOCK_N / BLOCK_B), num_warps, and the software-pipelining depth of the backward reduce's
    stage-1 loop (STAGES of ``tl.range``; 1: none; the other kernels ignore it)."""
    block_c: int
    block_hw: int
    num_warps: int
    num_stages: int = 1

    @property
    def block_n(self) -> int:
        """BLOCK_N of a merge tile (samples per step; kept in block_hw's place)."""
        return self.block_hw


def table_key(kernel: str, dtype: torch.dtype, channels_last: bool, flags: dict, c: int, hw: int) -> str:
    """The table's key: every input of the choice, e.g. ``ssa_bwd_reduce_partial/float64/nhwc/HAS_RES=1,...
    /C=256/HW=196``."""
    flag_text = ",".join(f"{name}={int(bool(flags[name]))}" for name in sorted(flags))
    return (f"{kernel}/{str(dtype).removeprefix('torch.')}/{'nhwc' if channels_last else 'nchw'}/{flag_text}"
            f"/C={c}/HW={hw}")


def _load_table() -> dict[str, Tile]:
    if INTERPRETED or not os.path.exists(TABLE_PATH):
        return {}
    with open(TABLE_PATH) as f:
        return {key: Tile(*value) for key, value in json.load(f).get("tiles", {}).items()}


_TABLE = _load_table()


def _pow2_clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, x))))


def _streams_residual(flags: dict) -> bool:
    """The backward reduce reads a third activation tensor (the residual, for the relu mask or its sums)."""
    return bool(flags.get("HAS_RES") and (flags.get("RELU") or flags.get("RES_SUM")))


def rule(kernel: str, dtype: torch.dtype, channels_last: bool, flags: dict, c: int, hw: int) -> Tile:
    """The rule's tile for a kernel (see the module docstring); tiny tiles under the interpreter, so that the
    test shapes still have several blocks, masked tails and multi-split merges."""
    wide = dtype == torch.float64  # 8-byte values (and fp64 accumulators): fewer elements per thread
    if kernel in ELEMENTWISE_KERNELS:
        if INTERPRETED:
            return Tile(8, 8, 1)
        if channels_last:
            block_c = _pow2_clamp(c, 32, 256)
            return Tile(block_c, min(32, max(1, (512 if wide else 2048) // block_c)), 4)
        block_hw = _pow2_clamp(hw, 64, 1024)
        return Tile(max(1, 1024 // block_hw), block_hw, 4)
    if kernel in REDUCE_KERNELS:
        if INTERPRETED:
            return Tile(8, 4, 1, 2 if _streams_residual(flags) else 1)
        heavy = _streams_residual(flags)
        if channels_last:
            if heavy:
                return Tile(64, 8 if wide else 16, 4, 2)
            return Tile(64, 16 if wide else 32, 4)
        block_hw = _pow2_clamp(hw, 64, 256)
        # fp32 with the residual: half the elements (the 2-byte and fp64 tiles are small already: halving them
        # would narrow their accesses)
        elements = (256 if wide else 512 if dtype.itemsize == 2 else 512 if heavy else 1024)
        return Tile(max(1, elements // block_hw), block_hw, 4)
    if kernel in MERGE_KERNELS:
        if INTERPRETED:
            return Tile(4, 2, 1)
        return Tile(32, 2 if wide else 8, 4)
    if kernel in COMBINE_KERNELS:
        if INTERPRETED:
            return Tile(4, 2, 1)
        return Tile(64, 16, 4)
    raise ValueError(f"resnet_fast (triton): no tile rule for kernel {kernel!r}")


def pick(kernel: str, dtype: torch.dtype, channels_last: bool, flags: dict, c: int, hw: int) -> Tile:
    """The launch parameters of ``kernel`` for this key: the shipped table's entry, else the rule's."""
    if _TABLE:
        tile = _TABLE.get(table_key(kernel, dtype, channels_last, flags, c, hw))
        if tile is not None:
            return tile
    return rule(kernel, dtype, channels_last, flags, c, hw)


def candidates(kernel: str, dtype: torch.dtype, channels_last: bool) -> list[Tile]:
    """Tiles the table-writing benchmark times (and the cubin test compiles) besides the rule's choice."""
    wide = dtype == torch.float64
    if kernel in ELEMENTWISE_KERNELS:
        if channels_last:
            return [Tile(64, 32, 4), Tile(128, 16, 4), Tile(128, 32, 8), Tile(256, 8, 4), Tile(256, 16, 8)]
        return [Tile(1, 1024, 4), Tile(2, 512, 4), Tile(4, 256, 4), Tile(8, 128, 4), Tile(16, 64, 4),
                Tile(4, 512, 8)]
    if kernel in REDUCE_KERNELS:
        if channels_last:
            return [Tile(64, 16, 4), Tile(32, 32, 4), Tile(64, 32, 8)] + ([] if wide else [Tile(64, 32, 4)])
        return [Tile(2, 256, 4), Tile(4, 256, 8), Tile(8, 128, 4), Tile(16, 64, 4)]
    if kernel in MERGE_KERNELS:
        return [Tile(32, 4, 4), Tile(32, 8, 4), Tile(16, 16, 4)] + ([] if wide else [Tile(32, 16, 4), Tile(64, 8, 4)])
    if kernel in COMBINE_KERNELS:
        return [Tile(64, 16, 4), Tile(32, 16, 4), Tile(128, 8, 4)]
    raise ValueError(f"resnet_fast (triton): no candidates for kernel {kernel!r}")
