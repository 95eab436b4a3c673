"""bn_relu_conv: conv2d(relu(batch_norm(y)), weight), the convolution after a Conv-BN-ReLU.

Eager autograd keeps the convolution's input, relu(bn(y)), alive for the weight gradient,
next to y that BatchNorm keeps: two activations per layer. This op keeps only y (which the
previous convolution's output already is) and recomputes relu(bn(y)) in backward with one
scale/shift pass (DESIGN.md section 3, phase 2, the In-Place ABN idea): a ResNet block
then saves its convolutions' raw outputs and its input only.

Forward: one statistics pass over y, one pass that applies BN + ReLU, ATen's convolution.
Backward: the recompute pass, ATen's convolution backward, then the BN-ReLU backward of
``bn_relu`` (two passes over y). Registered as ``resnet_fast::bn_relu_conv`` returning
(out, mean, invstd, var_update) as ``bn_relu`` does; the functional ``bn_relu_conv``
updates the running statistics afterwards.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import _bn, _direct_call, _double_backward
from ._autocast import autocast_disabled, autocast_dtype, cast_for_conv

Tensor = torch.Tensor


def _forward(y: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
             running_var: Optional[Tensor], weight: Tensor, stride: Sequence[int], padding: Sequence[int],
             dilation: Sequence[int], groups: int, use_batch_stats: bool, eps: float,
             group_name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    params = _bn.BNParams(bn_weight, bn_bias, running_mean, running_var)
    result = _bn.bn_act_forward(y, params, use_batch_stats, eps, True, group_name=group_name)
    out = F.conv2d(result.out.to(weight.dtype), weight, None, stride, padding, dilation, groups)
    var = result.var if use_batch_stats else _bn.empty_stats(y)
    return out, result.norm.mean.clone(), result.norm.invstd, var


bn_relu_conv_op = torch.library.custom_op("resnet_fast::bn_relu_conv", _forward, mutates_args=())


@bn_relu_conv_op.register_fake
def _(y, bn_weight, bn_bias, running_mean, running_var, weight, stride, padding, dilation, groups, use_batch_stats,
      eps, group_name):
    out = F.conv2d(y.to(weight.dtype), weight, None, stride, padding, dilation, groups)
    stats = y.new_empty((y.shape[1],), dtype=_bn.acc_dtype(y.dtype))
    var = stats.new_empty(stats.shape if use_batch_stats else (0,))
    return out, stats, torch.empty_like(stats), var


def _setup_context(ctx, inputs, output):
    (y, bn_weight, bn_bias, _, _, weight, stride, padding, dilation, groups, use_batch_stats, eps,
     group_name) = inputs
    _, mean, invstd, _ = output
    ctx.save_for_backward(y, bn_weight, bn_bias, weight, mean, invstd)
    ctx.config = (list(stride), list(padding), list(dilation), groups, use_batch_stats, group_name, eps)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_out, *_):
    y, bn_weight, bn_bias, weight, mean, invstd = ctx.saved_tensors
    stride, padding, dilation, groups, use_batch_stats, group_name, eps = ctx.config
    need_y, need_gamma, need_beta = ctx.needs_input_grad[:3]
    need_w = ctx.needs_input_grad[5]
    if _double_backward.wanted():
        _double_backward.require_supported(group_name)

        def output(y, bn_weight, bn_bias, weight):
            z = _double_backward.batch_norm(y, bn_weight, bn_bias, mean, invstd, use_batch_stats, eps)
            return F.conv2d(torch.relu(z).to(y.dtype).to(weight.dtype), weight, None, stride, padding, dilation,
                            groups)

        grad_y, grad_gamma, grad_beta, grad_w = _double_backward.gradients(
            output, (y, bn_weight, bn_bias, weight), grad_out, (need_y, need_gamma, need_beta, need_w))
        return (grad_y, grad_gamma, grad_beta, None, None, grad_w) + (None,) * 7
    params = _bn.BNParams(bn_weight, bn_bias, None, None)
    norm = _bn.saved_normalized(mean, invstd, params, y)
    n = y.shape[0]
    # The convolution's input, recomputed exactly as the forward computed it.
    conv_input = _bn.prim("scale_shift_act", y)(y, _bn.expand_nc(norm.a, n), _bn.expand_nc(norm.c0, n),
                                                None, None, None, True).to(weight.dtype)
    need_bn = need_y or need_gamma or need_beta
    grad_input, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_out, conv_input, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [need_bn, need_w, False])
    del conv_input
    grad_y = grad_gamma = grad_beta = None
    if need_bn:
        r = _bn.bn_act_backward(grad_input.to(y.dtype), y, params, norm, use_batch_stats, True, None, None, None,
                                None, None, group_name, {"y": need_y, "weight": need_gamma, "bias": need_beta})
        grad_y, grad_gamma, grad_beta = r.grad_y, r.grad_weight, r.grad_bias
    return (grad_y, grad_gamma, grad_beta, None, None, grad_w) + (None,) * 7


_call_op = _direct_call.register_autograd(bn_relu_conv_op, _forward, _setup_context, _backward)


def bn_relu_conv(y: Tensor, bn_weight: Optional[Tensor], bn_bias: Optional[Tensor], running_mean: Optional[Tensor],
                 running_var: Optional[Tensor], weight: Tensor, *, stride=1, padding=0, dilation=1, groups: int = 1,
                 training: bool, momentum: Optional[float] = 0.1, eps: float = 1e-5,
                 num_batches_tracked: Optional[Tensor] = None, group_name: str = "") -> Tensor:
    """F.conv2d(relu(F.batch_norm(y, ...)), weight, None, stride, padding, dilation, groups).

    Same BatchNorm semantics as :func:`resnet_fast.ops.bn_relu` (running statistics updated
    in place in training). Saves y, not the convolution's input, for backward. Under
    autocast BN runs in y's dtype and the convolution in the autocast dtype, as eager's would.
    """
    _bn.check_activation("bn_relu_conv", "y", y)
    _bn.check_conv("bn_relu_conv", "y", y, weight, groups)
    use_batch_stats = training or running_mean is None
    params = _bn.BNParams(bn_weight, bn_bias, running_mean, running_var)
    _bn.check_batch_norm("bn_relu_conv", y, params, use_batch_stats, affine_prefix="bn_")
    (weight,) = cast_for_conv(weight)
    _bn.require(weight.dtype == y.dtype or autocast_dtype(y) == weight.dtype,
                lambda: f"bn_relu_conv: y is {y.dtype}, weight {weight.dtype}")
    stride, padding, dilation = list(_pair(stride)), list(_pair(padding)), list(_pair(dilation))
    with autocast_disabled(y):
        out, mean, _, var = _call_op(_bn.standard_layout(y), bn_weight, bn_bias, running_mean, running_var,
                                     weight, stride, padding, dilation, groups, use_batch_stats, eps, group_name)
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)
    return out
