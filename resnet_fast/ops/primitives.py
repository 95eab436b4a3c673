"""The kernel primitives every backend implements, written in plain torch.

This module is the executable specification of the primitives and declares their
schemas, once (``SCHEMAS``; ops/_registration.py defines them, the C++ and CUDA
kernels only implement them). It is also the "reference" backend. The C++ CPU and
CUDA kernels and the Triton kernels are tested against it.

Three passes over activations and two per-channel finalize steps make a BatchNorm +
activation layer:

    forward:  bn_stats -> bn_finalize -> scale_shift_act
    backward: scale_shift_act_backward_reduce -> bn_backward_finalize
              -> scale_shift_act_backward_apply

The finalize steps hold the whole per-channel BatchNorm algebra (invstd, the affine
pair, the unbiased variance for running_var, d(gamma), d(beta) and the input-gradient
coefficients), so no per-channel arithmetic runs between the kernels.

Shapes: ``y``, ``residual``, ``grad_out`` are (N, C, H, W) in either memory format;
per-(n, c) coefficients are (N, C), per-channel ones (C,), all in the accumulation
dtype (float64 for float64 inputs, float32 otherwise); a BatchNorm's weight and bias
may be of any floating dtype and are read in the accumulation dtype. Outputs keep
``y``'s memory format and dtype.
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
        # eager's relu backward (threshold_backward): 0 where z <= 0, so a NaN z passes the gradient
        g = torch.where(z <= 0, torch.zeros((), dtype=g.dtype, device=g.device), g)
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


def _over_samples(t: Tensor) -> Tensor:
    """A per-channel total from (N, C) per-sample sums (summed over n) or (C,) totals."""
    return t.sum(0) if t.dim() == 2 else t


def _per_sample(v: Tensor, n: int) -> Tensor:
    """(C,) ``v`` as an (n, C) contiguous table, or ``v`` itself when n == 0."""
    return v.unsqueeze(0).expand(n, -1).contiguous() if n > 0 else v


def bn_finalize(
    mean: Tensor,
    var: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    count: int,
    n: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(invstd, var_update, scale, shift) of a BatchNorm normalized by ``mean`` and biased ``var``.

    invstd = 1 / sqrt(var + eps), a = weight * invstd (invstd without weight),
    c0 = bias - mean * a (-mean * a without bias): bn(y) = a * y + c0. scale = a and
    shift = c0 as (n, C) tables when n > 0 (what scale_shift_act takes), else (C,).
    var_update = var * count / max(count - 1, 1): the unbiased variance that updates
    running_var, ``count`` being the values per channel (all ranks' under SyncBN).
    """
    invstd = 1.0 / torch.sqrt(var + eps)
    a = invstd if weight is None else weight.to(invstd.dtype) * invstd
    c0 = -(mean * a) if bias is None else bias.to(invstd.dtype) - mean * a
    var_update = var * (count / max(count - 1, 1))
    return invstd, var_update, _per_sample(a, n), _per_sample(c0, n)


def bn_backward_finalize(
    sum_dz: Tensor,
    sum_dz_y: Tensor,
    invstd: Tensor,
    weight: Optional[Tensor],
    count: int,
    n: int,
    use_batch_stats: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(grad_weight, grad_bias, k_g, k_0, k_y) of a BatchNorm from its gradient sums.

    With dz the gradient at bn's output and x_hat = (y - mean) * invstd:
    sum_dz = sum dz and sum_dz_y = sum dz * (y - mean), each either (N, C) per-sample sums
    (summed over n here, in order) or (C,) totals. grad_bias = sum_dz,
    grad_weight = sum_dz_y * invstd and, with a = weight * invstd (invstd without weight),
    the input gradient dy = k_g * dz + k_0 + k_y * (y - mean) has

        k_g = a,  k_0 = -a * sum_dz / count,  k_y = -a * invstd * invstd * sum_dz_y / count

    in training (``use_batch_stats``; ``count`` values per channel, all ranks' under SyncBN),
    and k_0 = k_y = 0 in eval (the statistics are constants). k_g and k_0 are (n, C) tables
    when n > 0, else (C,); k_y is (C,).
    """
    total = _over_samples(sum_dz)
    total_y = _over_samples(sum_dz_y)
    a = invstd if weight is None else weight.to(invstd.dtype) * invstd
    if use_batch_stats:
        k_0 = -(a * total / count)
        k_y = -(a * invstd * invstd * total_y / count)
    else:
        k_0 = torch.zeros_like(a)
        k_y = torch.zeros_like(a)
    return total_y * invstd, total, _per_sample(a, n), _per_sample(k_0, n), k_y


PRIMITIVES = {
    "bn_stats": bn_stats,
    "scale_shift_act": scale_shift_act,
    "scale_shift_act_backward_reduce": scale_shift_act_backward_reduce,
    "scale_shift_act_backward_apply": scale_shift_act_backward_apply,
    "bn_finalize": bn_finalize,
    "bn_backward_finalize": bn_backward_finalize,
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
    "bn_finalize": (
        "(Tensor mean, Tensor var, Tensor? weight, Tensor? bias, float eps, int count, int n) "
        "-> (Tensor invstd, Tensor var_update, Tensor scale, Tensor shift)"
    ),
    "bn_backward_finalize": (
        "(Tensor sum_dz, Tensor sum_dz_y, Tensor invstd, Tensor? weight, int count, int n, bool use_batch_stats) "
        "-> (Tensor grad_weight, Tensor grad_bias, Tensor k_g, Tensor k_0, Tensor k_y)"
    ),
}


# ----------------------------------------------------------------------------- fused convolutions
# The convolution primitives of a block's conv chain (conv -> BN+ReLU -> conv ...; design:
# kernels/triton/conv/NOTES.md). Activations are channels_last float16/bfloat16/float32, per-channel
# coefficients float32; an absent optional output is an empty (0,) tensor. The Triton launchers
# (kernels/triton/conv) implement them; these plain-torch versions are the specification, the
# "reference" of the conv table, and what torch.compile traces where the Triton kernels are interpreted.
# Rounding as the kernels: a prologue's operand (relu(x * scale + shift), or A * dz + B * y + C) is
# rounded to the activation dtype before the product, as a materialized tensor would be; the products
# accumulate in float32; statistics and sums are taken of the stored, rounded outputs.
def _conv_prologue(t: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """relu(t * scale + shift) rounded to t's dtype, or t; in float32 for the product."""
    if scale is None:
        return t.float()
    return torch.relu(t.float() * _c(scale) + _c(shift)).to(t.dtype).float()


def _bn_grad_prologue(dz: Tensor, y: Optional[Tensor], coef_a: Optional[Tensor], coef_b: Optional[Tensor],
                      coef_c: Optional[Tensor]) -> Tensor:
    """A * dz + B * y + C rounded to dz's dtype (the consumer BN's input gradient), or dz; in float32."""
    if y is None:
        return dz.float()
    return (_c(coef_a) * dz.float() + _c(coef_b) * y.float() + _c(coef_c)).to(dz.dtype).float()


def _channels_last(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype).contiguous(memory_format=torch.channels_last)


def conv_forward(x: Tensor, weight: Tensor, stride: int, padding: int, scale: Optional[Tensor],
                 shift: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, var): y = conv2d(a, weight) with a = relu(x * scale + shift) (the producer BN + ReLU;
    zero padding applies to a) or x; mean and biased var (C_out,) of the stored y over (N, OH, OW)."""
    y = torch.nn.functional.conv2d(_conv_prologue(x, scale, shift), weight.float(), None, stride, padding)
    y = _channels_last(y, x.dtype)
    var, mean = torch.var_mean(y.float(), dim=(0, 2, 3), correction=0)
    return y, mean, var


def conv_dgrad(dz: Tensor, weight: Tensor, height: int, width: int, stride: int, padding: int, y: Optional[Tensor],
               coef_a: Optional[Tensor], coef_b: Optional[Tensor], coef_c: Optional[Tensor],
               x_prev: Optional[Tensor], scale_prev: Optional[Tensor], shift_prev: Optional[Tensor],
               mean_prev: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(g, sum_g, sum_gx): da = the gradient at the convolution's (height, width) input a from
    dy = A * dz + B * y + C (with y and the coefficients) or dz; with the producer (x_prev, its BN's
    scale_prev, shift_prev, mean_prev) g = da where x_prev * scale_prev + shift_prev is not <= 0 (else 0) and the sums
    sum g, sum g * (x_prev - mean_prev) over (N, H, W); else g = da and empty sums."""
    dy = _bn_grad_prologue(dz, y, coef_a, coef_b, coef_c)
    shape = (dz.shape[0], weight.shape[1], height, width)
    da = torch.nn.grad.conv2d_input(shape, weight.float(), dy, stride, padding)
    if x_prev is None:
        # (two empty tensors: outputs must not alias)
        return _channels_last(da, dz.dtype), dz.new_empty((0,), dtype=torch.float32), dz.new_empty(
            (0,), dtype=torch.float32)
    xp = x_prev.float()
    g = _channels_last(torch.where(xp * _c(scale_prev) + _c(shift_prev) <= 0, 0.0, da), dz.dtype)
    gf = g.float()
    return g, gf.sum((0, 2, 3)), (gf * (xp - _c(mean_prev))).sum((0, 2, 3))


def conv_wgrad(x: Tensor, dz: Tensor, weight_shape: list[int], stride: int, padding: int, scale: Optional[Tensor],
               shift: Optional[Tensor], y: Optional[Tensor], coef_a: Optional[Tensor], coef_b: Optional[Tensor],
               coef_c: Optional[Tensor]) -> Tensor:
    """dW (weight_shape, x's dtype, channels_last) of conv2d(a, W): a = relu(x * scale + shift) or x,
    the output gradient dy = A * dz + B * y + C or dz, as in conv_forward / conv_dgrad."""
    dy = _bn_grad_prologue(dz, y, coef_a, coef_b, coef_c)
    dw = torch.nn.grad.conv2d_weight(_conv_prologue(x, scale, shift), list(weight_shape), dy, stride, padding)
    return _channels_last(dw, x.dtype)


CONV_PRIMITIVES = {
    "conv_forward": conv_forward,
    "conv_dgrad": conv_dgrad,
    "conv_wgrad": conv_wgrad,
}

# Python-only (no C++ kernel: the Triton launchers implement them, called through the conv table).
CONV_SCHEMAS = {
    "conv_forward": (
        "(Tensor x, Tensor weight, int stride, int padding, Tensor? scale, Tensor? shift) "
        "-> (Tensor y, Tensor mean, Tensor var)"
    ),
    "conv_dgrad": (
        "(Tensor dz, Tensor weight, int height, int width, int stride, int padding, Tensor? y, Tensor? coef_a, "
        "Tensor? coef_b, Tensor? coef_c, Tensor? x_prev, Tensor? scale_prev, Tensor? shift_prev, "
        "Tensor? mean_prev) -> (Tensor grad, Tensor sum_g, Tensor sum_gx)"
    ),
    "conv_wgrad": (
        "(Tensor x, Tensor dz, int[] weight_shape, int stride, int padding, Tensor? scale, Tensor? shift, "
        "Tensor? y, Tensor? coef_a, Tensor? coef_b, Tensor? coef_c) -> Tensor"
    ),
}
