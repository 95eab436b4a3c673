"""bn_finalize and bn_backward_finalize: the per-channel BatchNorm algebra as two small kernels.

Semantics: resnet_fast/ops/primitives.py (``bn_finalize``, ``bn_backward_finalize``). Each
program owns BLOCK_C channels: it reads the channels' statistics (or gradient sums, summed
over the samples in order n = 0, 1, ...), evaluates the formulas once per channel in the
accumulation dtype, and writes the per-channel outputs and, for n > 0, the (n, C) tables
row by row. The formulas are written once, in ``forward_coefficients`` and
``backward_coefficients``, which the fused convolutions' finalize steps call too.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _launch
from ._common import INTERPRETED, check_device, require

Tensor = torch.Tensor


@triton.jit
def _reciprocal_sqrt_rn(x):
    """1 / sqrt(x), both correctly rounded, as torch computes ``1.0 / torch.sqrt(x)`` (no rsqrt.approx)."""
    if x.dtype == tl.float64:
        return 1.0 / tl.sqrt(x)  # float64 sqrt and division are the correctly rounded sqrt.rn / div.rn
    else:
        return tl.div_rn(tl.full(x.shape, 1.0, x.dtype), tl.sqrt_rn(x))


@triton.jit
def forward_coefficients(mean, var, weight, bias, eps, bessel):
    """(invstd, var_update, a, c0) with bn(y) = a * y + c0; weight = 1 and bias = 0 when absent.

    ``eps`` and ``bessel`` (count / max(count - 1, 1)) in the statistics' dtype, rounded from
    the host's double as torch rounds a Python scalar."""
    invstd = _reciprocal_sqrt_rn(var + eps)
    a = weight * invstd
    c0 = bias - mean * a
    return invstd, var * bessel, a, c0


@triton.jit
def backward_coefficients(total, total_y, invstd, weight, count, USE_BATCH_STATS: tl.constexpr):
    """(grad_weight, grad_bias, k_g, k_0, k_y) from the channel's sums of dz and dz * (y - mean)."""
    a = weight * invstd
    if USE_BATCH_STATS:
        k_0 = -(a * total / count)
        k_y = -(a * invstd * invstd * total_y / count)
    else:
        k_0 = tl.zeros_like(a)
        k_y = tl.zeros_like(a)
    return total_y * invstd, total, a, k_0, k_y


@triton.jit
def _store_per_sample(ptr, value, cs, mask, C, N):
    """``value`` (BLOCK_C,) as rows n = 0..N-1 of an (N, C) table, or once when N == 0."""
    if N == 0:
        tl.store(ptr + cs, value, mask=mask)
    for n in range(N):
        tl.store(ptr + n * C + cs, value, mask=mask)


@triton.jit
def _bn_finalize_kernel(
    mean_ptr,  # *ACC (C,): batch (or running) mean
    var_ptr,  # *ACC (C,): biased batch (or running) variance
    weight_ptr,  # *W (C,): BN weight (read when HAS_WEIGHT)
    bias_ptr,  # *B (C,): BN bias (read when HAS_BIAS)
    invstd_ptr,  # *ACC (C,) out: 1 / sqrt(var + eps)
    var_update_ptr,  # *ACC (C,) out: var * count / max(count - 1, 1)
    scale_ptr,  # *ACC (N, C) or (C,) out: a
    shift_ptr,  # *ACC (N, C) or (C,) out: c0
    C,  # channels
    N,  # rows of the scale/shift tables; 0: per-channel outputs
    eps: tl.float64,  # BN epsilon
    bessel: tl.float64,  # count / max(count - 1, 1), count = values per channel
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    mean = tl.load(mean_ptr + cs, mask=mask, other=0.0)
    var = tl.load(var_ptr + cs, mask=mask, other=1.0)
    weight = tl.full(mean.shape, 1.0, mean.dtype)
    bias = tl.zeros_like(mean)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + cs, mask=mask, other=1.0).to(mean.dtype)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cs, mask=mask, other=0.0).to(mean.dtype)
    invstd, var_update, a, c0 = forward_coefficients(mean, var, weight, bias, tl.full(mean.shape, eps, mean.dtype),
                                                     tl.full(mean.shape, bessel, mean.dtype))
    tl.store(invstd_ptr + cs, invstd, mask=mask)
    tl.store(var_update_ptr + cs, var_update, mask=mask)
    _store_per_sample(scale_ptr, a, cs, mask, C, N)
    _store_per_sample(shift_ptr, c0, cs, mask, C, N)


@triton.jit
def _sum_over_samples(ptr, cs, mask, C, ROWS):
    """Rows 0..ROWS-1 of an (ROWS, C) table summed in order; ROWS == 0: the (C,) vector itself."""
    total = tl.load(ptr + cs, mask=mask, other=0.0)
    for n in range(1, ROWS):
        total += tl.load(ptr + n * C + cs, mask=mask, other=0.0)
    return total


@triton.jit
def _bn_backward_finalize_kernel(
    sum_dz_ptr,  # *ACC (ROWS_DZ, C) or (C,): sums of dz
    sum_dz_y_ptr,  # *ACC (ROWS_DZ_Y, C) or (C,): sums of dz * (y - mean)
    invstd_ptr,  # *ACC (C,)
    weight_ptr,  # *W (C,): BN weight (read when HAS_WEIGHT)
    grad_weight_ptr,  # *ACC (C,) out
    grad_bias_ptr,  # *ACC (C,) out
    k_g_ptr,  # *ACC (N, C) or (C,) out
    k_0_ptr,  # *ACC (N, C) or (C,) out
    k_y_ptr,  # *ACC (C,) out
    C,  # channels
    N,  # rows of the k_g / k_0 tables; 0: per-channel outputs
    ROWS_DZ,  # samples in sum_dz (0: already a total)
    ROWS_DZ_Y,  # samples in sum_dz_y (0: already a total)
    count: tl.float64,  # values per channel
    HAS_WEIGHT: tl.constexpr,
    USE_BATCH_STATS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cs < C
    total = _sum_over_samples(sum_dz_ptr, cs, mask, C, ROWS_DZ)
    total_y = _sum_over_samples(sum_dz_y_ptr, cs, mask, C, ROWS_DZ_Y)
    invstd = tl.load(invstd_ptr + cs, mask=mask, other=1.0)
    weight = tl.full(invstd.shape, 1.0, invstd.dtype)
    if HAS_WEIGHT:
        weight = tl.load(weight_ptr + cs, mask=mask, other=1.0).to(invstd.dtype)
    grad_weight, grad_bias, k_g, k_0, k_y = backward_coefficients(total, total_y, invstd, weight,
                                                                  tl.full(invstd.shape, count, invstd.dtype),
                                                                  USE_BATCH_STATS)
    tl.store(grad_weight_ptr + cs, grad_weight, mask=mask)
    tl.store(grad_bias_ptr + cs, grad_bias, mask=mask)
    tl.store(k_y_ptr + cs, k_y, mask=mask)
    _store_per_sample(k_g_ptr, k_g, cs, mask, C, N)
    _store_per_sample(k_0_ptr, k_0, cs, mask, C, N)


def _block_c(c: int) -> int:
    """Channels per program: a fixed rule (no autotuning: the results do not depend on it anyway)."""
    return 4 if INTERPRETED else min(256, triton.next_power_of_2(max(c, 1)))


def _per_channel(op: str, name: str, t: Optional[Tensor], c: int, like: Tensor, *, floating_any=False):
    if t is None:
        return None
    require(t.dim() == 1 and t.shape[0] == c, lambda: f"{op}: expected {name} of shape ({c},), "
                                                           f"got {tuple(t.shape)}")
    require(t.device == like.device, lambda: f"{op}: {name} is on {t.device}, expected {like.device}")
    require(t.is_floating_point(), lambda: f"{op}: {name} must be floating point, got {t.dtype}")
    if not floating_any:
        require(t.dtype == like.dtype, lambda: f"{op}: {name} must be {like.dtype}, got {t.dtype}")
    return t.contiguous()


def _sums(op: str, name: str, t: Tensor, c: int, like: Tensor) -> tuple[Tensor, int]:
    """A gradient sum as (contiguous tensor, rows): (N, C) per-sample sums or (C,) totals (rows 0)."""
    require(t.dim() in (1, 2) and t.shape[-1] == c,
                 lambda: f"{op}: expected {name} of shape (N, {c}) or ({c},), got {tuple(t.shape)}")
    require(t.dtype == like.dtype and t.device == like.device,
                 lambda: f"{op}: {name} must be {like.dtype} on {like.device}, got {t.dtype} on {t.device}")
    require(t.dim() == 1 or t.shape[0] > 0, lambda: f"{op}: {name} has no samples")
    return t.contiguous(), (t.shape[0] if t.dim() == 2 else 0)


def _check_device(op: str, t: Tensor) -> None:
    check_device(op, t)
    require(t.dtype in (torch.float32, torch.float64),
                 lambda: f"{op}: statistics must be float32 or float64, got {t.dtype}")


_PLANS = _launch.plan_cache()
_BACKWARD_PLANS = _launch.plan_cache()
_sig = _launch.signature


class _Plan(_launch.Plan):
    """A finalize's launch for one input signature and its per-channel outputs' and tables' shapes."""

    __slots__ = ("table", "finalize")


def _forward(plan, mean, var, weight, bias):
    invstd, var_update = torch.empty_like(mean), torch.empty_like(mean)
    scale, shift = mean.new_empty(plan.table), mean.new_empty(plan.table)
    if plan.finalize is not None:
        with plan.guard(mean):
            plan.finalize(mean, var, weight if weight is not None else mean, bias if bias is not None else mean,
                          invstd, var_update, scale, shift)
    return invstd, var_update, scale, shift


def bn_finalize(mean: Tensor, var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                count: int, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    eager = _launch.eager(mean)
    if eager:
        key = (_sig(mean), _sig(var), _sig(weight), _sig(bias), eps, count, n)
        plan = _PLANS.get(key)
        if plan is not None:  # inputs of a signature checked and planned before
            return _forward(plan, mean, var, weight, bias)
    inputs = (mean, var, weight, bias)
    op = "bn_finalize"
    _check_device(op, mean)
    require(mean.dim() == 1, lambda: f"{op}: expected mean of shape (C,), got {tuple(mean.shape)}")
    c = mean.shape[0]
    var = _per_channel(op, "var", var, c, mean)
    weight = _per_channel(op, "weight", weight, c, mean, floating_any=True)
    bias = _per_channel(op, "bias", bias, c, mean, floating_any=True)
    require(n >= 0, lambda: f"{op}: n must be >= 0, got {n}")
    mean = mean.contiguous()
    plan = _Plan(mean, direct=eager)
    plan.table = (n, c) if n > 0 else (c,)
    plan.finalize = None
    if c > 0:
        block = _block_c(c)
        plan.finalize = _launch.KernelLaunch(
            _bn_finalize_kernel, (triton.cdiv(c, block),), (c, n, float(eps), count / max(count - 1, 1)),
            dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_C=block), traced=not eager)
    if eager and all(a is b for a, b in zip(inputs, (mean, var, weight, bias))):
        _launch.remember(_PLANS, key, plan)  # no copy was needed: later calls of this signature reuse the plan
    return _forward(plan, mean, var, weight, bias)


def _backward(plan, sum_dz, sum_dz_y, invstd, weight):
    grad_weight, grad_bias, k_y = torch.empty_like(invstd), torch.empty_like(invstd), torch.empty_like(invstd)
    k_g, k_0 = invstd.new_empty(plan.table), invstd.new_empty(plan.table)
    if plan.finalize is not None:
        with plan.guard(invstd):
            plan.finalize(sum_dz, sum_dz_y, invstd, weight if weight is not None else invstd,
                          grad_weight, grad_bias, k_g, k_0, k_y)
    return grad_weight, grad_bias, k_g, k_0, k_y


def bn_backward_finalize(sum_dz: Tensor, sum_dz_y: Tensor, invstd: Tensor, weight: Optional[Tensor], count: int,
                         n: int, use_batch_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    eager = _launch.eager(invstd)
    if eager:
        key = (_sig(sum_dz), _sig(sum_dz_y), _sig(invstd), _sig(weight), count, n, use_batch_stats)
        plan = _BACKWARD_PLANS.get(key)
        if plan is not None:  # inputs of a signature checked and planned before
            return _backward(plan, sum_dz, sum_dz_y, invstd, weight)
    inputs = (sum_dz, sum_dz_y, invstd, weight)
    op = "bn_backward_finalize"
    _check_device(op, invstd)
    require(invstd.dim() == 1, lambda: f"{op}: expected invstd of shape (C,), got {tuple(invstd.shape)}")
    c = invstd.shape[0]
    sum_dz, rows_dz = _sums(op, "sum_dz", sum_dz, c, invstd)
    sum_dz_y, rows_dz_y = _sums(op, "sum_dz_y", sum_dz_y, c, invstd)
    weight = _per_channel(op, "weight", weight, c, invstd, floating_any=True)
    require(n >= 0, lambda: f"{op}: n must be >= 0, got {n}")
    invstd = invstd.contiguous()
    plan = _Plan(invstd, direct=eager)
    plan.table = (n, c) if n > 0 else (c,)
    plan.finalize = None
    if c > 0:
        block = _block_c(c)
        plan.finalize = _launch.KernelLaunch(
            _bn_backward_finalize_kernel, (triton.cdiv(c, block),), (c, n, rows_dz, rows_dz_y, float(count)),
            dict(HAS_WEIGHT=weight is not None, USE_BATCH_STATS=use_batch_stats, BLOCK_C=block), traced=not eager)
    if eager and all(a is b for a, b in zip(inputs, (sum_dz, sum_dz_y, invstd, weight))):
        _launch.remember(_BACKWARD_PLANS, key, plan)  # no copy was needed: later calls of this signature reuse it
    return _backward(plan, sum_dz, sum_dz_y, invstd, weight)


__all__ = ["bn_finalize", "bn_backward_finalize", "forward_coefficients", "backward_coefficients"]
