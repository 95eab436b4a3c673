"""bn_add_relu: relu(batch_norm(y) + identity), the tail of every BasicBlock/Bottleneck.

``identity`` is the block input, or the raw output of the downsample convolution
normalized by its own BatchNorm in the same pass (``identity_bn``). One read of y and
identity, one write of out. Registered as ``resnet_fast::bn_add_relu``; see
``_block_tail`` for the outputs and what backward saves.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _block_tail, _direct_call

Tensor = torch.Tensor


def _forward(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
             running_var: Optional[Tensor], identity: Tensor, identity_bn: bool, id_weight: Optional[Tensor],
             id_bias: Optional[Tensor], id_running_mean: Optional[Tensor], id_running_var: Optional[Tensor],
             use_batch_stats: bool, eps: float, relu: bool, group_name: str) -> tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _block_tail.forward(y, weight, bias, running_mean, running_var, identity, identity_bn, id_weight, id_bias,
                               id_running_mean, id_running_var, use_batch_stats, eps, relu, group_name)


bn_add_relu_op = torch.library.custom_op("resnet_fast::bn_add_relu", _forward, mutates_args=())


@bn_add_relu_op.register_fake
def _(y, weight, bias, running_mean, running_var, identity, identity_bn, id_weight, id_bias, id_running_mean,
      id_running_var, use_batch_stats, eps, relu, group_name):
    return _block_tail.fake(y, identity_bn, use_batch_stats)


def _setup_context(ctx, inputs, output):
    (y, weight, bias, _, _, identity, identity_bn, id_weight, id_bias, _, _, use_batch_stats, eps, relu,
     group_name) = inputs
    _block_tail.setup_context(ctx, y, weight, bias, identity, identity_bn, id_weight, id_bias, use_batch_stats,
                              eps, relu, group_name, output)


def _backward(ctx, grad_out, *_):
    need = ctx.needs_input_grad
    needs = {"y": need[0], "weight": need[1], "bias": need[2], "residual": need[5], "res_weight": need[7],
             "res_bias": need[8]}
    r = _block_tail.backward(ctx, grad_out, needs)
    return (r.grad_y, r.grad_weight, r.grad_bias, None, None, r.grad_residual, None, r.grad_res_weight,
            r.grad_res_bias) + (None,) * 6


_call_op = _direct_call.register_autograd(bn_add_relu_op, _forward, _setup_context, _backward)


def bn_add_relu(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], identity: Tensor, *, training: bool,
                momentum: Optional[float] = 0.1, eps: float = 1e-5, relu: bool = True,
                num_batches_tracked: Optional[Tensor] = None, identity_bn: Optional[Sequence] = None,
                group_name: str = "") -> Tensor:
    """relu(F.batch_norm(y, ...) + identity'), identity' = identity or F.batch_norm(identity, *identity_bn).

    ``identity_bn`` = (weight, bias, running_mean, running_var[, num_batches_tracked]) of the
    downsample BatchNorm, which shares ``training``, ``momentum`` and ``eps``. Running
    statistics are updated in place as nn.BatchNorm2d does; ``group_name`` synchronizes
    the statistics across a process group (SyncBatchNorm).
    """
    bn = (weight, bias, running_mean, running_var, num_batches_tracked)
    return _block_tail.call("bn_add_relu", _call_op, y, bn, identity, identity_bn, (), training=training,
                            momentum=momentum, eps=eps, relu=relu, group_name=group_name)
