"""bn_relu_conv: conv2d(relu(batch_norm(y)), weight), the convolution after a Conv-BN-ReLU.

Eager autograd keeps the convolution's input, relu(bn(y)), alive for the weight gradient,
next to y that BatchNorm keeps: two activations per layer. This op keeps only y (which the
previous convolution's output already is) and recomputes relu(bn(y)) in backward with one
scale/shift pass (DESIGN.md section 3, phase 2, the In-Place ABN idea): a ResNet block
then saves its convolutions' raw outputs and its input only.

Forward: one statistics pass over y, one pass that applies BN + ReLU, ATen's convolution.
Backward: the recompute pass, ATen's convolution backward, then the BN-ReLU backward of
``bn_relu`` (two passes over y). The functional ``bn_relu_conv`` updates the running
statistics after ``BnReluConvFunction``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .. import backend
from . import _bn, _double_backward
from ._autocast import autocast_disabled, autocast_dtype, cast_for_conv
from ._function import FusedFunction

Tensor = torch.Tensor


class BnReluConvFunction(FusedFunction):
    """(y, bn_weight, bn_bias, running_mean, running_var, weight, config) -> (out, mean, var_update, invstd,
    scale, shift), config = (stride, padding, dilation, groups, use_batch_stats, eps, group_name)."""

    @staticmethod
    def compute(prims, y, bn_weight, bn_bias, running_mean, running_var, weight, config):
        stride, padding, dilation, groups, use_batch_stats, eps, group_name = config
        params = _bn.BNParams(bn_weight, bn_bias, running_mean, running_var)
        r = _bn.bn_act_forward(prims, y, params, use_batch_stats, eps, True, group_name=group_name)
        out = F.conv2d(r.out.to(weight.dtype), weight, None, stride, padding, dilation, groups)
        return out, r.norm.mean, r.norm.var_update, r.norm.invstd, r.norm.scale, r.norm.shift

    @staticmethod
    def forward(y, bn_weight, bn_bias, running_mean, running_var, weight, config):
        return BnReluConvFunction.compute(backend.primitives(y.device), y, bn_weight, bn_bias, running_mean,
                                          running_var, weight, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, bn_weight, bn_bias, _, _, weight, config = inputs
        _, mean, _, invstd, scale, shift = output
        ctx.save_for_backward(y, bn_weight, bn_bias, weight, mean, invstd, scale, shift)
        ctx.config = config
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:  # the output was not used
            return (None,) * 7
        y, bn_weight, bn_bias, weight, mean, invstd, scale, shift = ctx.saved_tensors
        stride, padding, dilation, groups, use_batch_stats, eps, group_name = ctx.config
        need_y, need_gamma, need_beta = ctx.needs_input_grad[:3]
        need_w = ctx.needs_input_grad[5]
        if _double_backward.wanted():
            _double_backward.require_supported(group_name)

            def output(y, bn_weight, bn_bias, weight):
                z = _double_backward.batch_norm(y, bn_weight, bn_bias, mean, invstd, use_batch_stats, eps)
                return F.conv2d(torch.relu(z).to(y.dtype).to(weight.dtype), weight, None, stride, padding,
                                dilation, groups)

            grad_y, grad_gamma, grad_beta, grad_w = _double_backward.gradients(
                output, (y, bn_weight, bn_bias, weight), grad_out, (need_y, need_gamma, need_beta, need_w))
            return grad_y, grad_gamma, grad_beta, None, None, grad_w, None
        prims = backend.primitives(y.device)
        # The convolution's input, recomputed exactly as the forward computed it.
        conv_input = prims.scale_shift_act(y, scale, shift, None, None, None, True).to(weight.dtype)
        need_bn = need_y or need_gamma or need_beta
        grad_input, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, conv_input, weight, None, stride, padding, dilation, False, [0, 0], groups,
            [need_bn, need_w, False])
        del conv_input
        grad_y = grad_gamma = grad_beta = None
        if need_bn:
            params = _bn.BNParams(bn_weight, bn_bias, None, None)
            norm = _bn.Normalized(mean, invstd, None, scale, shift, _bn.count_of(y))
            r = _bn.bn_act_backward(prims, grad_input.to(y.dtype), y, params, norm, use_batch_stats, True, None,
                                    None, None, None, group_name,
                                    {"y": need_y, "weight": need_gamma, "bias": need_beta})
            grad_y, grad_gamma, grad_beta = r.grad_y, r.grad_weight, r.grad_bias
        return grad_y, grad_gamma, grad_beta, None, None, grad_w, None


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
    stride, padding, dilation = tuple(_pair(stride)), tuple(_pair(padding)), tuple(_pair(dilation))
    config = (stride, padding, dilation, groups, use_batch_stats, eps, group_name)
    with autocast_disabled(y):
        out, mean, var, *_ = BnReluConvFunction.call(_bn.standard_layout(y), bn_weight, bn_bias, running_mean,
                                                     running_var, weight, config)
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)
    return out
