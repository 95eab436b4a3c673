"""scale_shift_act: out = act(y * scale[n, c] + shift[n, c] + R), R = residual * res_scale[c] + res_shift[c],
residual, or 0 (csrc/ops.cpp has the contract, resnet_fast/ops/primitives.py the reference).

One elementwise pass: each program owns one [BLOCK_C, BLOCK_HW] tile of one sample, so
its per-(n, c) and per-channel coefficients are BLOCK_C-long vector loads (no per-element
index division), and the tile is long along the unit-stride axis (hw for NCHW, c for
channels_last) for 16-byte accesses.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _launch, _tiles
from ._common import (Tensor, channels_contiguous, check_activation, check_device, coefficient, export, nchw_vec,
                      pre_activation, require, standard, vec_strides)


@triton.jit
def _scale_shift_act_fwd_kernel(
    y_ptr,  # *T (N, C, H, W) input, NCHW or channels_last
    res_ptr,  # *T (N, C, H, W) residual, any of the two layouts (read when HAS_RES)
    out_ptr,  # *T (N, C, H, W) out, with y's strides
    scale_ptr,  # *ACC (N, C): factor of y per (n, c)
    shift_ptr,  # *ACC (N, C): addend per (n, c)
    res_scale_ptr,  # *ACC (C,): factor of the residual per channel (read when RES_AFFINE)
    res_shift_ptr,  # *ACC (C,): addend of the residual per channel (read when RES_AFFINE)
    C,  # channels
    HW,  # H * W
    stride_yn,  # y's (and out's) stride of n
    stride_yc,  # y's stride of c
    stride_yhw,  # y's stride of the collapsed hw = h * W + w
    stride_rn,  # residual's stride of n
    stride_rc,  # residual's stride of c
    stride_rhw,  # residual's stride of hw
    HAS_RES: tl.constexpr,  # add a residual
    RES_AFFINE: tl.constexpr,  # transform it by res_scale, res_shift first
    RELU: tl.constexpr,  # activation: relu, else identity
    BLOCK_C: tl.constexpr,  # channels per tile
    BLOCK_HW: tl.constexpr,  # positions per tile
    VEC: tl.constexpr,  # HW and the n, c strides arrive divided by VEC (NCHW rows VEC-aligned: _common.nchw_vec)
):
    """Moves (2 + HAS_RES) * N*C*H*W*sizeof(T) bytes (read y [+ residual], write out), plus
    2*N*C + 2*C coefficients of sizeof(ACC), read once per tile and served by the caches."""
    HW, stride_yn, stride_yc = HW * VEC, stride_yn * VEC, stride_yc * VEC
    stride_rn, stride_rc = stride_rn * VEC, stride_rc * VEC
    hw_block = tl.program_id(0)
    c_block = tl.program_id(1)
    n = tl.program_id(2)
    ACC = scale_ptr.dtype.element_ty
    cs = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    hws = hw_block * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_mask = cs < C
    mask = c_mask[:, None] & (hws < HW)[None, :]
    y_offs = n.to(tl.int64) * stride_yn + cs[:, None] * stride_yc + hws[None, :] * stride_yhw

    y = tl.load(y_ptr + y_offs, mask=mask, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + n * C + cs, mask=c_mask, other=0.0)
    r = y
    res_scale = scale
    res_shift = shift
    if HAS_RES:
        r_offs = n.to(tl.int64) * stride_rn + cs[:, None] * stride_rc + hws[None, :] * stride_rhw
        r = tl.load(res_ptr + r_offs, mask=mask, other=0.0).to(ACC)
        if RES_AFFINE:
            res_scale = tl.load(res_scale_ptr + cs, mask=c_mask, other=0.0)
            res_shift = tl.load(res_shift_ptr + cs, mask=c_mask, other=0.0)
    z = pre_activation(y, scale, shift, r, res_scale, res_shift, HAS_RES, RES_AFFINE)
    if RELU:
        z = tl.where(z < 0, 0.0, z)  # keeps NaN, as torch.relu
    tl.store(out_ptr + y_offs, z.to(out_ptr.dtype.element_ty), mask=mask)


def elementwise_grid(n: int, c: int, hw: int, tile: _tiles.Tile) -> tuple[int, int, int]:
    """Grid of the elementwise kernels: (hw blocks, channel blocks, samples)."""
    require(n <= 65535, lambda: f"resnet_fast (triton): batch {n} exceeds the grid's 65535 limit")
    return triton.cdiv(hw, tile.block_hw), triton.cdiv(c, tile.block_c), n


_PLANS = _launch.plan_cache()
_sig = _launch.signature


class _Plan(_launch.Plan):
    __slots__ = ("fwd",)

    def __call__(self, y, scale, shift, residual, res_scale, res_shift):
        out = torch.empty_like(y)
        with self.guard(y):
            self.fwd(y, residual if residual is not None else y, out, scale, shift,
                     res_scale if res_scale is not None else scale, res_shift if res_shift is not None else shift)
        return out


def scale_shift_act_launcher(y: Tensor, scale: Tensor, shift: Tensor, residual: Optional[Tensor],
                            res_scale: Optional[Tensor], res_shift: Optional[Tensor], relu: bool) -> Tensor:
    eager = _launch.eager(y)
    if eager:
        key = (_sig(y), _sig(scale), _sig(shift), _sig(residual), _sig(res_scale), _sig(res_shift), relu)
        plan = _PLANS.get(key)
        if plan is not None:  # inputs of a signature checked and planned before
            return plan(y, scale, shift, residual, res_scale, res_shift)
    inputs = (y, scale, shift, residual, res_scale, res_shift)
    op = "scale_shift_act"
    check_activation(op, "y", y)
    check_device(op, y)
    require((res_scale is None) == (res_shift is None),
                 lambda: f"{op}: res_scale and res_shift must both be given or both None")
    require(res_scale is None or residual is not None, lambda: f"{op}: res_scale given without a residual")
    y = standard(y)
    n, c, h, w = y.shape
    scale = coefficient(op, "scale", scale, (n, c), y)
    shift = coefficient(op, "shift", shift, (n, c), y)
    res_scale = coefficient(op, "res_scale", res_scale, (c,), y)
    res_shift = coefficient(op, "res_shift", res_shift, (c,), y)
    if residual is not None:
        check_activation(op, "residual", residual, like=y)
        residual = standard(residual)
    if y.numel() == 0:
        return torch.empty_like(y)
    require(torch.empty_like(y).stride() == y.stride(),
                 lambda: f"{op}: empty_like(y) changed the strides")  # the kernel writes out with y's strides
    flags = dict(HAS_RES=residual is not None, RES_AFFINE=res_scale is not None, RELU=relu)
    tile = _tiles.pick("scale_shift_act", y.dtype, channels_contiguous(y), flags, c, h * w)
    vec = nchw_vec(y, residual)
    plan = _Plan(y, direct=eager)
    plan.fwd = _launch.KernelLaunch(
        _scale_shift_act_fwd_kernel, elementwise_grid(n, c, h * w, tile),
        (c, h * w // vec, *vec_strides(y, vec), *vec_strides(residual, vec)),
        dict(**flags, BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, VEC=vec, num_warps=tile.num_warps),
        traced=not eager)
    if eager and all(a is b for a, b in zip(inputs, (y, scale, shift, residual, res_scale, res_shift))):
        _launch.remember(_PLANS, key, plan)  # no copy was needed: later calls of this signature reuse the plan
    return plan(y, scale, shift, residual, res_scale, res_shift)


scale_shift_act = export("scale_shift_act", scale_shift_act_launcher)
