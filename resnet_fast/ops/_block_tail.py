"""Shared body of the residual block tails bn_add_relu and squeeze_excite.

    out = relu(bn(y) * gate + identity')      identity' = identity or bn_id(identity)

where gate = 1 for bn_add_relu and the Squeeze-Excitation gate for squeeze_excite.
Both ops return (out, mean, invstd, var_update, id_mean, id_invstd, id_var_update):
the statistics used (for backward) and the unbiased batch variances (for the
running-statistics update done after the op). Backward saves y and identity only
(identity is the block input, which the block's first convolution saves anyway).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _bn, _double_backward
from ._autocast import autocast_disabled

Tensor = torch.Tensor

N_OUTPUTS = 7


def forward(y, weight, bias, running_mean, running_var, identity, identity_bn, id_weight, id_bias,
            id_running_mean, id_running_var, use_batch_stats, eps, relu, group_name, se=None):
    params = _bn.BNParams(weight, bias, running_mean, running_var)
    id_params = _bn.BNParams(id_weight, id_bias, id_running_mean, id_running_var) if identity_bn else None
    result = _bn.bn_act_forward(y, params, use_batch_stats, eps, relu, identity, id_params, se, group_name)
    empty = _bn.empty_stats(y)
    var = result.var if use_batch_stats else empty
    if identity_bn:
        id_stats = (result.res_norm.mean.clone(), result.res_norm.invstd,
                    result.res_var if use_batch_stats else empty.clone())
    else:
        id_stats = (empty.clone(), empty.clone(), empty.clone())
    outputs = (result.out, result.norm.mean.clone(), result.norm.invstd, var) + id_stats
    return outputs + (result.sample_mean,) if se is not None else outputs


def fake(y, identity_bn, use_batch_stats):
    stats = y.new_empty((y.shape[1],), dtype=_bn.acc_dtype(y.dtype))
    empty = stats.new_empty((0,))
    var = torch.empty_like(stats) if use_batch_stats else empty
    id_stats = (torch.empty_like(stats), torch.empty_like(stats), torch.empty_like(var)) if identity_bn else (
        empty.clone(), empty.clone(), empty.clone())
    return (torch.empty_like(y), torch.empty_like(stats), torch.empty_like(stats), var) + id_stats


def setup_context(ctx, y, weight, bias, identity, identity_bn, id_weight, id_bias, use_batch_stats, eps, relu,
                  group_name, output, se_tensors=()):
    _, mean, invstd, _, id_mean, id_invstd, _ = output[:N_OUTPUTS]
    ctx.save_for_backward(y, weight, bias, identity, id_weight, id_bias, mean, invstd, id_mean, id_invstd,
                          *se_tensors)
    ctx.config = (identity_bn, use_batch_stats, relu, group_name, eps)
    ctx.mark_non_differentiable(*output[1:])


def backward(ctx, grad_out, needs, se_from_saved=None):
    """Gradients for (y, weight, bias, identity, id_weight, id_bias) and the SE parameters."""
    y, weight, bias, identity, id_weight, id_bias, mean, invstd, id_mean, id_invstd, *se_saved = ctx.saved_tensors
    identity_bn, use_batch_stats, relu, group_name, eps = ctx.config
    se, sample_mean = se_from_saved(se_saved) if se_from_saved else (None, None)
    if _double_backward.wanted():
        return _differentiable_backward(grad_out, y, weight, bias, mean, invstd, identity, identity_bn, id_weight,
                                        id_bias, id_mean, id_invstd, se, use_batch_stats, eps, relu, group_name, needs)
    params = _bn.BNParams(weight, bias, None, None)
    norm = _bn.saved_normalized(mean, invstd, params, y)
    id_params = id_norm = None
    if identity_bn:
        id_params = _bn.BNParams(id_weight, id_bias, None, None)
        id_norm = _bn.saved_normalized(id_mean, id_invstd, id_params, identity)
    return _bn.bn_act_backward(grad_out, y, params, norm, use_batch_stats, relu, identity, id_params, id_norm,
                               se, sample_mean, group_name, needs)


def _differentiable_backward(grad_out, y, weight, bias, mean, invstd, identity, identity_bn, id_weight, id_bias,
                             id_mean, id_invstd, se, use_batch_stats, eps, relu, group_name, needs):
    """backward()'s result from eager operations, for a gradient with create_graph=True."""
    _double_backward.require_supported(group_name)

    def output(y, weight, bias, identity, id_weight, id_bias, *se_params):
        z = _double_backward.batch_norm(y, weight, bias, mean, invstd, use_batch_stats, eps)
        if se_params:
            z = _double_backward.se_scale(z, _bn.SEParams(*se_params))
        if identity_bn:
            return _double_backward.activation(z + _double_backward.batch_norm(
                identity, id_weight, id_bias, id_mean, id_invstd, use_batch_stats, eps), relu, y)
        return _double_backward.activation(z + identity.to(z.dtype), relu, y)

    se_inputs = () if se is None else (se.fc1_weight, se.fc1_bias, se.fc2_weight, se.fc2_bias)
    grads = _double_backward.gradients(
        output, (y, weight, bias, identity, id_weight, id_bias) + se_inputs, grad_out,
        [needs.get(name) for name in _bn.GRADIENTS] + [t is not None and t.requires_grad for t in se_inputs])
    return _bn.BackwardResult(*grads[:6], grads[6:] if se is not None else ())


def unpack_identity_bn(identity_bn):
    """(flag, weight, bias, running_mean, running_var, num_batches_tracked) from the functional argument."""
    if identity_bn is None:
        return False, None, None, None, None, None
    if len(identity_bn) == 4:
        identity_bn = tuple(identity_bn) + (None,)
    return (True,) + tuple(identity_bn)


def call(op_name: str, op, y: Tensor, bn: tuple, identity: Tensor, identity_bn, extra: tuple, *, training: bool,
         momentum: Optional[float], eps: float, relu: bool, group_name: str) -> Tensor:
    """Check the inputs, run ``op``, then update the running statistics (main and identity BN)."""
    weight, bias, running_mean, running_var, num_batches_tracked = bn
    has_id_bn, id_weight, id_bias, id_running_mean, id_running_var, id_num_batches = unpack_identity_bn(identity_bn)
    _bn.check_activation(op_name, "y", y)
    _bn.check_activation(op_name, "identity", identity)
    _bn.check_same_shape(op_name, "identity", identity, y)
    use_batch_stats = training or running_mean is None
    _bn.check_batch_norm(op_name, y, _bn.BNParams(weight, bias, running_mean, running_var), use_batch_stats)
    if has_id_bn:
        _bn.check_batch_norm(op_name, identity, _bn.BNParams(id_weight, id_bias, id_running_mean, id_running_var),
                             use_batch_stats, prefix="identity_bn ")
    y = _bn.standard_layout(y)
    identity = _bn.match_layout(identity, y)
    with autocast_disabled(y):
        out, mean, _, var, id_mean, _, id_var = op(
            y, weight, bias, running_mean, running_var, identity, has_id_bn, id_weight, id_bias, id_running_mean,
            id_running_var, *extra, use_batch_stats, eps, relu, group_name)[:N_OUTPUTS]
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var, momentum)
        if has_id_bn and id_running_mean is not None:
            _bn.update_running_stats(id_running_mean, id_running_var, id_num_batches, id_mean, id_var, momentum)
    return out
