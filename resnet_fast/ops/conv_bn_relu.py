"""conv_bn_relu: relu(batch_norm(conv2d(x, weight)) [+ residual]) (relu optional: conv_bn for downsample paths).

The convolution is ATen's (cuDNN / oneDNN); the fusion is around it:

* batch statistics (training): conv, one statistics pass over y, one pass that applies
  BN + ReLU. Backward saves x and y only and recomputes the normalized value and the
  ReLU mask from y (no saved BN output or ReLU output), then runs ATen's convolution
  backward. With ``recompute_conv=True`` it saves x and the output instead and recomputes
  y = conv(x) in backward (the ReLU mask then comes from the output): one more convolution
  for not keeping y, the choice when y is wider than x and the output is kept anyway (a
  bottleneck's last 1x1 convolution, whose output is the next block's input).
* running statistics (eval) without gradients (inference): BN is folded into the
  convolution, conv(x, weight * a) + c0 with a = gamma / sqrt(var + eps),
  c0 = beta - mean * a, and the bias(+residual)+ReLU is the convolution's epilogue
  (``_folded_conv``). Eval with gradients (frozen BN) keeps conv then scale/shift, whose
  backward is as exact as eager's.

``residual`` (optional, the output's shape) is added after BN and before the ReLU: with it
the op is a whole residual block tail, conv3 + bn3 + add + ReLU, which is how the models
run a block's last convolution in inference (and in training with ``low_memory``).

``ConvBnReluFunction`` runs the training (and eval-with-gradients) path; the folded
inference path has no backward and runs without it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .. import backend
from . import _bn, _double_backward
from ._autocast import autocast_disabled, cast_for_conv
from ._folded_conv import folded_conv
from ._function import FusedFunction, transform_active

Tensor = torch.Tensor


class ConvBnReluFunction(FusedFunction):
    """(x, weight, bn_weight, bn_bias, running_mean, running_var, residual, config) ->
    (out, mean, var_update, y, invstd, scale, shift), config = (stride, padding, dilation, groups,
    use_batch_stats, eps, relu, recompute_conv, group_name); y is the convolution output."""

    @staticmethod
    def compute(prims, x, weight, bn_weight, bn_bias, running_mean, running_var, residual, config):
        stride, padding, dilation, groups, use_batch_stats, eps, relu, _, group_name = config
        params = _bn.BNParams(bn_weight, bn_bias, running_mean, running_var)
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        residual = None if residual is None else _bn.match_layout(residual, y)
        r = _bn.bn_act_forward(prims, y, params, use_batch_stats, eps, relu, residual, group_name=group_name)
        return r.out, r.norm.mean, r.norm.var_update, y, r.norm.invstd, r.norm.scale, r.norm.shift

    @staticmethod
    def forward(x, weight, bn_weight, bn_bias, running_mean, running_var, residual, config):
        return ConvBnReluFunction.compute(backend.primitives(x.device), x, weight, bn_weight, bn_bias, running_mean,
                                          running_var, residual, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bn_weight, bn_bias, _, _, residual, config = inputs
        out, mean, _, y, invstd, scale, shift = output
        relu, recompute_conv = config[6], config[7]
        if recompute_conv:
            # y is recomputed from x in backward; the ReLU mask is read off the output, which the
            # next layer keeps anyway (the residual is not needed then either).
            ctx.save_for_backward(x, weight, out if relu else None, bn_weight, bn_bias, None, mean, invstd, scale,
                                  shift)
        else:
            ctx.save_for_backward(x, weight, y, bn_weight, bn_bias, residual, mean, invstd, scale, shift)
        ctx.config = config
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # else backward gets a zero-filled gradient for y, y-sized

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:
            return (None,) * 8
        x, weight, saved, bn_weight, bn_bias, residual, mean, invstd, scale, shift = ctx.saved_tensors
        stride, padding, dilation, groups, use_batch_stats, eps, relu, recompute_conv, group_name = ctx.config
        need_x, need_w, need_gamma, need_beta = ctx.needs_input_grad[:4]
        need_residual = ctx.needs_input_grad[6]
        if _double_backward.wanted():
            grads = _differentiable_backward(grad_out, x, weight, saved, bn_weight, bn_bias, residual, mean, invstd,
                                             ctx.config, (need_x, need_w, need_gamma, need_beta, need_residual))
            return grads[:4] + (None, None, grads[4], None)
        params = _bn.BNParams(bn_weight, bn_bias, None, None)
        if recompute_conv:
            y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
            if relu:  # threshold_backward's mask, as eager's ReLU backward reads it
                grad_out = torch.ops.aten.threshold_backward(_bn.match_layout(grad_out, saved), saved, 0)
            relu, residual = False, None
        else:
            y = saved
            residual = None if residual is None else _bn.match_layout(residual, y)
        norm = _bn.Normalized(mean, invstd, None, scale, shift, _bn.count_of(y))
        r = _bn.bn_act_backward(backend.primitives(y.device), grad_out, y, params, norm, use_batch_stats, relu,
                                residual, None, None, None, group_name,
                                {"y": need_x or need_w, "weight": need_gamma, "bias": need_beta,
                                 "residual": need_residual})
        # d/d residual of relu(bn(y) + residual) is the masked gradient (needs_input_grad is False
        # for a residual that was not given).
        grad_residual = grad_out if recompute_conv and need_residual else r.grad_residual
        grad_x = grad_w = None
        if need_x or need_w:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                r.grad_y, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [need_x, need_w, False])
        return grad_x, grad_w, r.grad_weight, r.grad_bias, None, None, grad_residual, None


def _differentiable_backward(grad_out, x, weight, saved, bn_weight, bn_bias, residual, mean, invstd, config,
                             needs):
    """Gradients for (x, weight, bn_weight, bn_bias, residual) from eager operations, for a
    gradient with create_graph=True."""
    stride, padding, dilation, groups, use_batch_stats, eps, relu, recompute_conv, group_name = config
    _double_backward.require_supported(group_name)
    # With recompute_conv the residual was not saved: the ReLU mask comes off the saved
    # output, and the residual's gradient is the masked gradient.
    mask = saved.detach() > 0 if recompute_conv and relu else None

    def output(x, weight, bn_weight, bn_bias, residual):
        z = _double_backward.batch_norm(F.conv2d(x, weight, None, stride, padding, dilation, groups), bn_weight,
                                        bn_bias, mean, invstd, use_batch_stats, eps)
        if mask is not None:
            return torch.where(mask, z, 0).to(x.dtype)
        return _double_backward.activation(z if residual is None else z + residual.to(z.dtype), relu, x)

    grads = _double_backward.gradients(output, (x, weight, bn_weight, bn_bias, residual), grad_out, needs)
    if recompute_conv and needs[4]:
        grads = grads[:4] + (grad_out if mask is None else torch.where(mask, grad_out, 0),)
    return grads


def conv_bn_relu(x: Tensor, weight: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor],
                 running_mean: Optional[Tensor], running_var: Optional[Tensor], *, stride=1, padding=0, dilation=1,
                 groups: int = 1, training: bool, momentum: Optional[float] = 0.1, eps: float = 1e-5,
                 relu: bool = True, num_batches_tracked: Optional[Tensor] = None, group_name: str = "",
                 residual: Optional[Tensor] = None, recompute_conv: bool = False) -> Tensor:
    """relu(F.batch_norm(F.conv2d(x, weight, None, stride, padding, dilation, groups), ...) [+ residual]).

    Same BatchNorm semantics as :func:`resnet_fast.ops.bn_relu` (running statistics
    updated in place in training). ``residual``, when given, has the output's shape and
    dtype and is added before the ReLU (a residual block's tail). Under autocast the
    convolution runs in the autocast dtype, as eager's would.

    ``recompute_conv``: keep x and the output for backward, not the convolution output y,
    and recompute y there (same gradients, one more convolution).
    """
    _bn.check_activation("conv_bn_relu", "x", x)
    _bn.check_conv("conv_bn_relu", "x", x, weight, groups)
    use_batch_stats = training or running_mean is None
    params = _bn.BNParams(bn_weight, bn_bias, running_mean, running_var)
    channels = weight.shape[0]
    _bn.check_bn_vectors("conv_bn_relu", params, channels, x, affine_prefix="bn_")
    if residual is not None:
        _bn.check_activation("conv_bn_relu", "residual", residual)
    x, weight, residual = cast_for_conv(x, weight, residual)
    _bn.require(x.dtype == weight.dtype, lambda: f"conv_bn_relu: x is {x.dtype}, weight {weight.dtype}")
    stride, padding, dilation = tuple(_pair(stride)), tuple(_pair(padding)), tuple(_pair(dilation))
    out_h = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    out_w = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    out_size = torch.Size([x.shape[0], channels, out_h, out_w])
    if use_batch_stats:
        _bn.verify_batch_size(out_size)
    if residual is not None:
        _bn.require(residual.shape == out_size, lambda: f"conv_bn_relu: residual has shape {tuple(residual.shape)}, "
                                                        f"expected the output's {tuple(out_size)}")
        _bn.require(residual.dtype == x.dtype and residual.device == x.device,
                    lambda: f"conv_bn_relu: residual is {residual.dtype} on {residual.device}, "
                            f"expected the output's {x.dtype} on {x.device}")
    # Folding BN into the weights is exact in real arithmetic but rounds weight * a to the
    # conv dtype, which gradients would inherit: fold for inference only.
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bn_weight, bn_bias, residual))
    # Nor under a transform (the weight cache and oneDNN layouts: _function.transform_active).
    if not use_batch_stats and not needs_grad and not transform_active():
        with autocast_disabled(x):
            return folded_conv(x, weight, params, eps, stride, padding, dilation, groups, relu, residual)
    config = (stride, padding, dilation, groups, use_batch_stats, eps, relu, recompute_conv, group_name)
    with autocast_disabled(x):
        out, mean, var, *_ = ConvBnReluFunction.call(x, weight, bn_weight, bn_bias, running_mean, running_var,
                                                     residual, config)
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)
    return out
