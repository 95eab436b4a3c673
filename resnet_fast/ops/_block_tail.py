"""Shared body of the residual block tails bn_add_relu and squeeze_excite.

    out = relu(bn(y) * gate + identity')      identity' = identity or bn_id(identity)

where gate = 1 for bn_add_relu and the Squeeze-Excitation gate for squeeze_excite. The
Functions take (y, BN tensors, identity, identity-BN tensors[, SE weights], config) with
config = (identity_bn, use_batch_stats, eps, relu, group_name), and return

    (out, mean, var_update,                                    what the caller uses
     invstd, scale, shift,                                     what backward saves
     [id_mean, id_var_update, id_invstd, id_scale, id_shift]   (identity BN)
     [a, sample_mean, squeeze, gate, hidden])                  (SE)

(no identity-BN outputs for an identity without BN: every output costs host time in
Function.apply). The running statistics are updated after
the Function (main and identity BN). Backward saves y and identity only (identity is the
block input, which the block's first convolution saves anyway) and per-channel vectors.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import backend
from . import _bn, _double_backward, reference
from ._autocast import autocast_disabled
from ._function import FusedFunction

Tensor = torch.Tensor

def _compute(prims, y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
             id_running_var, se, config, y_stats=None):
    identity_bn, use_batch_stats, eps, relu, group_name = config
    params = _bn.BNParams(weight, bias, running_mean, running_var)
    id_params = _bn.BNParams(id_weight, id_bias, id_running_mean, id_running_var) if identity_bn else None
    r = _bn.bn_act_forward(prims, y, params, use_batch_stats, eps, relu, identity, id_params, se, group_name, y_stats)
    norm, id_norm = r.norm, r.res_norm
    outputs = (r.out, norm.mean, norm.var_update, norm.invstd, norm.scale, norm.shift)
    if id_norm is not None:
        outputs += (id_norm.mean, id_norm.var_update, id_norm.invstd, id_norm.scale, id_norm.shift)
    if se is not None:
        outputs += (r.se.a, r.se.sample_mean, r.se.squeeze, r.se.gate, r.se.hidden)
    return outputs


def _save(ctx, inputs, output, se_tensors=()):
    y, weight, bias, _, _, identity, id_weight, id_bias, _, _ = inputs[:10]
    config = inputs[-1]
    _, mean, _, invstd, scale, shift = output[:6]
    id_saved, rest = (None,) * 4, output[6:]
    if config[0]:  # identity BN
        id_mean, _, id_invstd, id_scale, id_shift = output[6:11]
        id_saved, rest = (id_mean, id_invstd, id_scale, id_shift), output[11:]
    ctx.save_for_backward(y, weight, bias, identity, id_weight, id_bias, mean, invstd, scale, shift, *id_saved,
                          *se_tensors, *rest)
    ctx.config = config
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics


def _backward(ctx, grad_out, needs, se_count=0):
    """Gradients for (y, weight, bias, identity, id_weight, id_bias) and the SE parameters."""
    saved = ctx.saved_tensors
    (y, weight, bias, identity, id_weight, id_bias, mean, invstd, scale, shift, id_mean, id_invstd, id_scale,
     id_shift) = saved[:14]
    se_params = _bn.SEParams(*saved[14:14 + se_count]) if se_count else None
    identity_bn, use_batch_stats, eps, relu, group_name = ctx.config
    if _double_backward.wanted():
        return _differentiable_backward(grad_out, y, weight, bias, mean, invstd, identity, identity_bn, id_weight,
                                        id_bias, id_mean, id_invstd, se_params, use_batch_stats, eps, relu,
                                        group_name, needs)
    count = _bn.count_of(y)
    norm = _bn.Normalized(mean, invstd, None, scale, shift, count)
    id_params = id_norm = None
    if identity_bn:
        id_params = _bn.BNParams(id_weight, id_bias, None, None)
        id_norm = _bn.Normalized(id_mean, id_invstd, None, id_scale, id_shift, count)
    se_state = _bn.SEState(se_params, *saved[14 + se_count:]) if se_count else None
    return _bn.bn_act_backward(backend.primitives(y.device), grad_out, y, _bn.BNParams(weight, bias, None, None),
                               norm, use_batch_stats, relu, identity, id_params, id_norm, se_state, group_name, needs)


def _differentiable_backward(grad_out, y, weight, bias, mean, invstd, identity, identity_bn, id_weight, id_bias,
                             id_mean, id_invstd, se, use_batch_stats, eps, relu, group_name, needs):
    """_backward()'s result from eager operations, for a gradient with create_graph=True."""
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


def _needs(ctx) -> dict:
    need = ctx.needs_input_grad
    return {"y": need[0], "weight": need[1], "bias": need[2], "residual": need[5], "res_weight": need[6],
            "res_bias": need[7]}


class BnAddReluFunction(FusedFunction):
    """(y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
    id_running_var, y_mean, y_var, config) -> the module docstring's outputs; y_mean / y_var: y's batch
    statistics from its producer (the fused convolution chain's epilogue), or None."""

    @staticmethod
    def compute(prims, y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
                id_running_var, y_mean, y_var, config):
        return _compute(prims, y, weight, bias, running_mean, running_var, identity, id_weight, id_bias,
                        id_running_mean, id_running_var, None, config, None if y_mean is None else (y_mean, y_var))

    @staticmethod
    def forward(y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
                id_running_var, y_mean, y_var, config):
        return BnAddReluFunction.compute(backend.primitives(y.device), y, weight, bias, running_mean, running_var,
                                         identity, id_weight, id_bias, id_running_mean, id_running_var, y_mean,
                                         y_var, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:  # the output was not used
            return (None,) * 13
        r = _backward(ctx, grad_out, _needs(ctx))
        return (r.grad_y, r.grad_weight, r.grad_bias, None, None, r.grad_residual, r.grad_res_weight,
                r.grad_res_bias, None, None, None, None, None)


class SqueezeExciteFunction(FusedFunction):
    """(y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
    id_running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, config) -> the module docstring's outputs."""

    @staticmethod
    def compute(prims, y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
                id_running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, config):
        se = _bn.SEParams(fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        return _compute(prims, y, weight, bias, running_mean, running_var, identity, id_weight, id_bias,
                        id_running_mean, id_running_var, se, config)

    @staticmethod
    def forward(y, weight, bias, running_mean, running_var, identity, id_weight, id_bias, id_running_mean,
                id_running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, config):
        return SqueezeExciteFunction.compute(backend.primitives(y.device), y, weight, bias, running_mean,
                                             running_var, identity, id_weight, id_bias, id_running_mean,
                                             id_running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs, output, se_tensors=inputs[10:14])

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:  # the output was not used
            return (None,) * 15
        r = _backward(ctx, grad_out, _needs(ctx), se_count=4)
        return (r.grad_y, r.grad_weight, r.grad_bias, None, None, r.grad_residual, r.grad_res_weight,
                r.grad_res_bias, None, None, *r.grad_se, None)


def unpack_identity_bn(identity_bn):
    """(flag, weight, bias, running_mean, running_var, num_batches_tracked) from the functional argument."""
    if identity_bn is None:
        return False, None, None, None, None, None
    if len(identity_bn) == 4:
        identity_bn = tuple(identity_bn) + (None,)
    return (True,) + tuple(identity_bn)


def call(op_name: str, function, y: Tensor, bn: tuple, identity: Tensor, identity_bn, extra: tuple, *,
         training: bool, momentum: Optional[float], eps: float, relu: bool, group_name: str) -> Tensor:
    """Check the inputs, run ``function``, then update the running statistics (main and identity BN)."""
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
    if _bn.empty_activation(y):
        se = extra if op_name == "squeeze_excite" else ()
        return getattr(reference, op_name)(y, weight, bias, running_mean, running_var, *se, identity,
                                           training=training, momentum=momentum, eps=eps, relu=relu,
                                           num_batches_tracked=num_batches_tracked, identity_bn=identity_bn)
    y = _bn.standard_layout(y)
    identity = _bn.match_layout(identity, y)
    config = (has_id_bn, use_batch_stats, eps, relu, group_name)
    with autocast_disabled(y):
        outputs = function.call(y, weight, bias, running_mean, running_var, identity, id_weight, id_bias,
                                id_running_mean, id_running_var, *extra, config)
    if training and running_mean is not None:
        _bn.update_running_stats(running_mean, running_var, num_batches_tracked, outputs[1], outputs[2], momentum)
        if has_id_bn and id_running_mean is not None:
            _bn.update_running_stats(id_running_mean, id_running_var, id_num_batches, outputs[6], outputs[7],
                                     momentum)
    return outputs[0]
