"""bn_relu: relu(batch_norm(x)), the pre-activation of ResNet v2 blocks (relu optional).

Registered op ``resnet_fast::bn_relu`` returns (out, mean, invstd, var_update): the
statistics used to normalize and, in training, the unbiased batch variance for the
running-statistics update, which the functional ``bn_relu`` below applies afterwards
(an op with an autograd formula may not mutate its inputs). Backward saves only ``x``
and recomputes the normalized value and the ReLU mask from it.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _bn, _direct_call, _double_backward
from ._autocast import autocast_disabled

Tensor = torch.Tensor
OP = "resnet_fast::bn_relu"


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
             running_var: Optional[Tensor], use_batch_stats: bool, eps: float, relu: bool,
             group_name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    params = _bn.BNParams(weight, bias, running_mean, running_var)
    result = _bn.bn_act_forward(x, params, use_batch_stats, eps, relu, group_name=group_name)
    var = result.var if use_batch_stats else _bn.empty_stats(x)
    return result.out, result.norm.mean.clone(), result.norm.invstd, var


bn_relu_op = torch.library.custom_op(OP, _forward, mutates_args=())


@bn_relu_op.register_fake
def _(x, weight, bias, running_mean, running_var, use_batch_stats, eps, relu, group_name):
    stats = x.new_empty((x.shape[1],), dtype=_bn.acc_dtype(x.dtype))
    var = stats.new_empty(stats.shape if use_batch_stats else (0,))
    return torch.empty_like(x), stats, torch.empty_like(stats), var


def _setup_context(ctx, inputs, output):
    x, weight, bias, running_mean, running_var, use_batch_stats, eps, relu, group_name = inputs
    _, mean, invstd, _ = output
    ctx.save_for_backward(x, weight, bias, mean, invstd)
    ctx.config = (use_batch_stats, relu, group_name, eps)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_out, *_):
    x, weight, bias, mean, invstd = ctx.saved_tensors
    use_batch_stats, relu, group_name, eps = ctx.config
    if _double_backward.wanted():
        _double_backward.require_supported(group_name)

        def output(x, weight, bias):
            z = _double_backward.batch_norm(x, weight, bias, mean, invstd, use_batch_stats, eps)
            return _double_backward.activation(z, relu, x)

        grads = _double_backward.gradients(output, (x, weight, bias), grad_out, ctx.needs_input_grad[:3])
        return grads + (None,) * 6
    params = _bn.BNParams(weight, bias, None, None)
    norm = _bn.saved_normalized(mean, invstd, params, x)
    needs = dict(zip(("y", "weight", "bias"), ctx.needs_input_grad[:3]))
    result = _bn.bn_act_backward(grad_out, x, params, norm, use_batch_stats, relu, None, None, None, None, None,
                                 group_name, needs)
    return result.grad_y, result.grad_weight, result.grad_bias, None, None, None, None, None, None


_call_op = _direct_call.register_autograd(bn_relu_op, _forward, _setup_context, _backward)


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
    with autocast_disabled(x):
        out, mean, _, var = _call_op(_bn.standard_layout(x), weight, bias, running_mean, running_var,
                                     use_batch_stats, eps, relu, group_name)
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)
    return out
