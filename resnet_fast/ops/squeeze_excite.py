"""squeeze_excite: the Squeeze-Excitation block tail of SE-ResNet/SE-ResNeXt (timm's layout).

    b    = bn(y)
    gate = sigmoid(fc2(relu(fc1(mean_hw(b)))))       fc1/fc2: 1x1 convs with bias
    out  = relu(b * gate + identity')                identity' = identity or bn_id(identity)

The squeeze mean_hw(b) = a * mean_hw(y) + c0 comes from the per-(n, c) means that the
BN statistics pass over y yields anyway (``bn_stats``'s sample_mean), so SE costs no
extra pass; the tiny MLP runs on (N, C) in fp32. Registered as
``resnet_fast::squeeze_excite``; returns the block-tail outputs (``_block_tail``) plus the
per-(n, c) means of y, which backward needs for the squeeze's gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _block_tail, _bn, _direct_call

Tensor = torch.Tensor


def _forward(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
             running_var: Optional[Tensor], identity: Tensor, identity_bn: bool, id_weight: Optional[Tensor],
             id_bias: Optional[Tensor], id_running_mean: Optional[Tensor], id_running_var: Optional[Tensor],
             fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
             use_batch_stats: bool, eps: float, relu: bool, group_name: str) -> tuple[
        Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    se = _bn.SEParams(fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return _block_tail.forward(y, weight, bias, running_mean, running_var, identity, identity_bn, id_weight, id_bias,
                               id_running_mean, id_running_var, use_batch_stats, eps, relu, group_name, se)


squeeze_excite_op = torch.library.custom_op("resnet_fast::squeeze_excite", _forward, mutates_args=())


@squeeze_excite_op.register_fake
def _(y, weight, bias, running_mean, running_var, identity, identity_bn, id_weight, id_bias, id_running_mean,
      id_running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, use_batch_stats, eps, relu, group_name):
    sample_mean = y.new_empty((y.shape[0], y.shape[1]), dtype=_bn.acc_dtype(y.dtype))
    return _block_tail.fake(y, identity_bn, use_batch_stats) + (sample_mean,)


def _setup_context(ctx, inputs, output):
    (y, weight, bias, _, _, identity, identity_bn, id_weight, id_bias, _, _, fc1_weight, fc1_bias, fc2_weight,
     fc2_bias, use_batch_stats, eps, relu, group_name) = inputs
    ctx.se_has_bias = (fc1_bias is not None, fc2_bias is not None)
    se_tensors = (output[-1], fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    _block_tail.setup_context(ctx, y, weight, bias, identity, identity_bn, id_weight, id_bias, use_batch_stats,
                              eps, relu, group_name, output, se_tensors)


def _se_from_saved(saved):
    sample_mean, fc1_weight, fc1_bias, fc2_weight, fc2_bias = saved
    return _bn.SEParams(fc1_weight, fc1_bias, fc2_weight, fc2_bias), sample_mean


def _backward(ctx, grad_out, *_):
    need = ctx.needs_input_grad
    needs = {"y": need[0], "weight": need[1], "bias": need[2], "residual": need[5], "res_weight": need[7],
             "res_bias": need[8]}
    r = _block_tail.backward(ctx, grad_out, needs, _se_from_saved)
    d_fc1_weight, d_fc1_bias, d_fc2_weight, d_fc2_bias = r.grad_se
    return (r.grad_y, r.grad_weight, r.grad_bias, None, None, r.grad_residual, None, r.grad_res_weight,
            r.grad_res_bias, None, None, d_fc1_weight, d_fc1_bias, d_fc2_weight, d_fc2_bias) + (None,) * 4


_call_op = _direct_call.register_autograd(squeeze_excite_op, _forward, _setup_context, _backward)


def squeeze_excite(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                   running_var: Optional[Tensor], fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                   fc2_bias: Optional[Tensor], identity: Tensor, *, training: bool, momentum: Optional[float] = 0.1,
                   eps: float = 1e-5, relu: bool = True, num_batches_tracked: Optional[Tensor] = None,
                   identity_bn: Optional[Sequence] = None, group_name: str = "") -> Tensor:
    """relu(b * sigmoid(fc2(relu(fc1(mean_hw(b))))) + identity'), b = F.batch_norm(y, ...).

    fc1_weight: (C_r, C, 1, 1) or (C_r, C); fc2_weight: (C, C_r, 1, 1) or (C, C_r).
    ``identity_bn`` and the running statistics behave as in :func:`bn_add_relu`.
    """
    channels = y.shape[1] if y.dim() == 4 else -1
    _bn.require(fc1_weight.dim() in (2, 4) and fc1_weight.shape[1] == channels,
                 lambda: f"squeeze_excite: fc1_weight must be (C_r, {channels}[, 1, 1]), got {tuple(fc1_weight.shape)}")
    hidden = fc1_weight.shape[0]
    _bn.require(fc2_weight.dim() in (2, 4) and tuple(fc2_weight.shape[:2]) == (channels, hidden),
                 lambda: f"squeeze_excite: fc2_weight must be ({channels}, {hidden}[, 1, 1]), "
                         f"got {tuple(fc2_weight.shape)}")
    bn = (weight, bias, running_mean, running_var, num_batches_tracked)
    se = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return _block_tail.call("squeeze_excite", _call_op, y, bn, identity, identity_bn, se, training=training,
                            momentum=momentum, eps=eps, relu=relu, group_name=group_name)
