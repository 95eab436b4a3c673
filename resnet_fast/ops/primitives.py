"""The four kernel primitives every backend implements, written in plain torch.

This module is the executable specification of the primitives declared in
``csrc/ops.cpp`` (read the comments there for the contract) and the "reference"
backend. The C++ CPU and CUDA kernels and the Triton kernels are tested against it.

Shapes: ``y``, ``residual``, ``grad_out`` are (N, C, H, W) in either memory format;
per-(n, c) coefficients are (N, C), per-channel ones (C,), all in the accumulation
dtype (float64 for float64 inputs, float32 otherwise). Outputs keep ``y``'s memory
format and dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

Tensor = torch.Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype in which statistics and coefficients are kept for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(t: Tensor) -> torch.memory_format:
    """channels_last when ``t`` is laid out so (and not trivially both), else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _nc(t: Tensor) -> Tensor:
    return t[:, :, None, None]


def _c(t: Tensor) -> Tensor:
    return t[None, :, None, None]


def _pre_activation(y, scale, shift, residual, res_scale, res_shift):
    acc = acc_dtype(y.dtype)
    z = y.to(acc) * _nc(scale) + _nc(shift)
    if residual is not None:
        r = residual.to(acc)
        if res_scale is not None:
            r = r * _c(res_scale) + _c(res_shift)
        z = z + r
    return z


def _masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu):
    g = grad_out.to(acc_dtype(y.dtype))
    if relu:
        z = _pre_activation(y, scale, shift, residual, res_scale, res_shift)
        g = torch.where(z > 0, g, torch.zeros((), dtype=g.dtype, device=g.device))
    return g


def bn_stats(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean (C,), biased var (C,), sample_mean (N, C)) of ``y`` over (N, H, W)."""
    acc = acc_dtype(y.dtype)
    yf = y.to(acc)
    # Two-pass (centered) variance: exact in spirit of Welford, no sum-of-squares cancellation.
    var, mean = torch.var_mean(yf, dim=(0, 2, 3), correction=0)
    sample_mean = yf.mean(dim=(2, 3))
    return mean, var, sample_mean.contiguous()


def scale_shift_act(
    y: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Optional[Tensor],
    res_scale: Optional[Tensor],
    res_shift: Optional[Tensor],
    relu: bool,
) -> Tensor:
    z = _pre_activation(y, scale, shift, residual, res_scale, res_shift)
    if relu:
        z = torch.relu(z)
    return z.to(y.dtype).contiguous(memory_format=memory_format_of(y))


def scale_shift_act_backward_reduce(
    grad_out: Tensor,
    y: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Optional[Tensor],
    res_scale: Optional[Tensor],
    res_shift: Optional[Tensor],
    relu: bool,
    center: Tensor,
    res_center: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    acc = acc_dtype(y.dtype)
    g = _masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu)
    sum_g = g.sum(dim=(2, 3))
    sum_g_y = (g * (y.to(acc) - _c(center))).sum(dim=(2, 3))
    if res_center is not None:
        sum_g_res = (g * (residual.to(acc) - _c(res_center))).sum(dim=(0, 2, 3))
    else:
        sum_g_res = torch.empty(0, dtype=acc, device=y.device)
    return sum_g.contiguous(), sum_g_y.contiguous(), sum_g_res


def scale_shift_act_backward_apply(
    grad_out: Tensor,
    y: Tensor,
    scale: Tensor,
    shift: Tensor,
    residual: Optional[Tensor],
    res_scale: Optional[Tensor],
    res_shift: Optional[Tensor],
    relu: bool,
    k_g: Tensor,
    k_0: Tensor,
    k_y: Tensor,
    center: Tensor,
    res_k_g: Optional[Tensor],
    res_k_0: Optional[Tensor],
    res_k_r: Optional[Tensor],
    res_center: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    acc = acc_dtype(y.dtype)
    fmt = memory_format_of(y)
    g = _masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu)
    grad_y = _nc(k_g) * g + _nc(k_0) + _c(k_y) * (y.to(acc) - _c(center))
    grad_y = grad_y.to(y.dtype).contiguous(memory_format=fmt)
    if res_k_g is not None:
        grad_res = _c(res_k_g) * g + _c(res_k_0) + _c(res_k_r) * (residual.to(acc) - _c(res_center))
        grad_res = grad_res.to(y.dtype).contiguous(memory_format=fmt)
    else:
        grad_res = torch.empty(0, dtype=y.dtype, device=y.device)
    return grad_y, grad_res


PRIMITIVES = {
    "bn_stats": bn_stats,
    "scale_shift_act": scale_shift_act,
    "scale_shift_act_backward_reduce": scale_shift_act_backward_reduce,
    "scale_shift_act_backward_apply": scale_shift_act_backward_apply,
}

# The same schemas as csrc/ops.cpp, for when the compiled library is not loaded.
SCHEMAS = {
    "bn_stats": "(Tensor y) -> (Tensor mean, Tensor var, Tensor sample_mean)",
    "scale_shift_act": (
        "(Tensor y, Tensor scale, Tensor shift, Tensor? residual, Tensor? res_scale, "
        "Tensor? res_shift, bool relu) -> Tensor"
    ),
    "scale_shift_act_backward_reduce": (
        "(Tensor grad_out, Tensor y, Tensor scale, Tensor shift, Tensor? residual, "
        "Tensor? res_scale, Tensor? res_shift, bool relu, Tensor center, Tensor? res_center) "
        "-> (Tensor sum_g, Tensor sum_g_y, Tensor sum_g_res)"
    ),
    "scale_shift_act_backward_apply": (
        "(Tensor grad_out, Tensor y, Tensor scale, Tensor shift, Tensor? residual, "
        "Tensor? res_scale, Tensor? res_shift, bool relu, Tensor k_g, Tensor k_0, Tensor k_y, "
        "Tensor center, Tensor? res_k_g, Tensor? res_k_0, Tensor? res_k_r, Tensor? res_center) "
        "-> (Tensor grad_y, Tensor grad_residual)"
    ),
}
