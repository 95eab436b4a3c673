"""bn_relu: relu(batch_norm(x)), the pre-activation of ResNet v2 blocks (relu optional).

Forward: bn_stats, bn_finalize, scale_shift_act (ops/_bn.py). The Function returns the
output and the statistics; the functional ``bn_relu`` updates the running statistics
afterwards (outside autograd, so torch.compile sees a plain in-place update). Backward
saves only ``x`` (and per-channel vectors) and recomputes the normalized value and the
ReLU mask from it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import backend
from . import _bn, _double_backward, reference
from ._autocast import autocast_disabled
from ._function import FusedFunction

Tensor = torch.Tensor


class BnReluFunction(FusedFunction):
    """(x, weight, bias, running_mean, running_var, (use_batch_stats, eps, relu, group_name))
    -> (out, mean, var_update, invstd, scale, shift)."""

    @staticmethod
    def compute(prims, x, weight, bias, running_mean, running_var, config):
        use_batch_stats, eps, relu, group_name = config
        params = _bn.BNParams(weight, bias, running_mean, running_var)
        r = _bn.bn_act_forward(prims, x, params, use_batch_stats, eps, relu, group_name=group_name)
        return r.out, r.norm.mean, r.norm.var_update, r.norm.invstd, r.norm.scale, r.norm.shift

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, config):
        return BnReluFunction.compute(backend.primitives(x.device), x, weight, bias, running_mean, running_var,
                                      config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _, _, config = inputs
        _, mean, var_update, invstd, scale, shift = output
        ctx.save_for_backward(x, weight, bias, mean, invstd, scale, shift)
        ctx.config = config
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:  # the output was not used
            return (None,) * 6
        x, weight, bias, mean, invstd, scale, shift = ctx.saved_tensors
        use_batch_stats, eps, relu, group_name = ctx.config
        needs = ctx.needs_input_grad
        if _double_backward.wanted():
            _double_backward.require_supported(group_name)

            def output(x, weight, bias):
                z = _double_backward.batch_norm(x, weight, bias, mean, invstd, use_batch_stats, eps)
                return _double_backward.activation(z, relu, x)

            return _double_backward.gradients(output, (x, weight, bias), grad_out, needs[:3]) + (None,) * 3
        params = _bn.BNParams(weight, bias, None, None)
        norm = _bn.Normalized(mean, invstd, None, scale, shift, _bn.count_of(x))
        r = _bn.bn_act_backward(backend.primitives(x.device), grad_out, x, params, norm, use_batch_stats, relu,
                                None, None, None, None, group_name, dict(zip(("y", "weight", "bias"), needs[:3])))
        return r.grad_y, r.grad_weight, r.grad_bias, None, None, None


def bn_relu(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
            running_var: Optional[Tensor], *, training: bool, momentum: Optional[float] = 0.1, eps: float = 1e-5,
            relu: bool = True, num_batches_tracked: Optional[Tensor] = None, group_name: str = "") -> Tensor:
    """relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)).

    Batch statistics are used when ``training`` or when no running statistics are given
    (``track_running_stats=False``), as nn.BatchNorm2d does; the running statistics and
    ``num_batches_tracked`` are then updated in place. ``group_name`` (a process group's
    ``group_name``) synchronizes the statistics across processes like nn.SyncBatchNorm.
    """
    _bn.check_activation("bn_relu", "x", x)
    use_batch_stats = training or running_mean is None
    params = _bn.BNParams(weight, bias, running_mean, running_var)
    _bn.check_batch_norm("bn_relu", x, params, use_batch_stats)
    if _bn.empty_activation(x):
        return reference.bn_relu(x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
                                 eps=eps, relu=relu, num_batches_tracked=num_batches_tracked)
    with autocast_disabled(x):
        out, mean, var_update, *_ = BnReluFunction.call(_bn.standard_layout(x), weight, bias, running_mean,
                                                        running_var, (use_batch_stats, eps, relu, group_name))
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var_update, momentum)
    return out
