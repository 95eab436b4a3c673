"""fused_conv_chain: a residual block's convolutions with the BatchNorm+ReLU between them fused in.

    y_1 = conv_1(x)
    y_i = conv_i(relu(bn_{i-1}(y_{i-1})))        i = 2 .. L   (L = 3: Bottleneck, 2: BasicBlock)

returns the last convolution's raw output y_L: the block tail (bn_L + residual [+ SE] + ReLU,
``bn_add_relu`` / ``squeeze_excite``) takes it from there, so the two paths meet at a BN boundary.

Each convolution is one ``conv_forward`` primitive: its prologue applies the previous BN+ReLU as
it loads y_{i-1} (relu(y * scale + shift), padded taps zero after it), its epilogue emits y_i's
BN statistics; ``bn_finalize`` turns them into scale/shift for the next prologue (and the
unbiased variance for running_var). No normalized or ReLU'd tensor is written.

Backward mirrors it, from dy_L (the tail's gradient at y_L), i = L .. 1:

    conv_dgrad_i:  dy_i = A_i * dz_i + B_i * y_i + C_i  in the prologue (BN_i's backward; dy_L = dz_L),
                   the producer's ReLU mask and BN_{i-1}'s gradient sums in the epilogue -> dz_{i-1}
    conv_wgrad_i:  both operands recomputed: relu(bn_{i-1}(y_{i-1})) and dy_i
    bn_backward_finalize_{i-1}: d(gamma), d(beta) and the input-gradient coefficients k_g, k_0, k_y,
                   so A = k_g, B = k_y, C = k_0 - k_y * mean (the same dy, written around y not y - mean)

so the gradient at a BN's input (dy_i) is never materialized either. The per-channel algebra is the
shared finalize primitives' (the backend table's ``bn_finalize`` / ``bn_backward_finalize``); the
convolutions come from ``conv_backend.conv_primitives``. Saved for backward: x, the weights, the raw
y_1 .. y_{L-1} and per-channel vectors (y_L is not needed: its BN's backward is the tail's).

The running statistics are updated after the Function, as nn.BatchNorm2d does. Not covered (the
callers keep today's path, ``models/_conv_fusion.py``): synchronized statistics (SyncBN with a
process group), float64, other convolutions than 1x1 / 3x3 (padding 1), stride 1 / 2, groups 1,
dilation 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import backend, conv_backend
from . import _bn, _double_backward
from ._autocast import autocast_disabled, cast_for_conv
from ._function import FusedFunction

Tensor = torch.Tensor
N_INPUTS = 13
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _layout(outputs: Sequence, bns: int) -> dict:
    """The Function's outputs by name: (y, mean, var) of the last convolution, per BN (mean,
    var_update), the raw intermediate outputs, per BN (invstd, scale, shift)."""
    o = list(outputs)
    return dict(y=o[0], last_mean=o[1], last_var=o[2], stats=o[3:3 + 2 * bns], ys=o[3 + 2 * bns:3 + 3 * bns],
                coefs=o[3 + 3 * bns:3 + 6 * bns])


def _compute(prims, conv, x, weights, bns, config):
    strides, paddings, bn_config = config
    h, scale, shift = x, None, None
    stats, ys, coefs = [], [], []
    for i, w in enumerate(weights):
        y, mean, var = conv.conv_forward(h, w, strides[i], paddings[i], scale, shift)
        if i == len(weights) - 1:
            return (y, mean, var, *stats, *ys, *coefs)
        params = bns[i]
        use_batch_stats, eps = bn_config[i]
        count = _bn.count_of(y)
        if not use_batch_stats:  # (a copy: the op returns the mean, which must not alias the buffer)
            mean, var = params.running_mean.to(torch.float32, copy=True), params.running_var.to(torch.float32)
        invstd, var_update, scale, shift = prims.bn_finalize(mean, var, params.weight, params.bias, eps, count, 0)
        stats += [mean, var_update]
        ys.append(y)
        coefs += [invstd, scale, shift]
        h = y
    raise AssertionError("unreachable")


def _split(x, w1, w2, w3, g1, b1, rm1, rv1, g2, b2, rm2, rv2):
    weights = [w for w in (w1, w2, w3) if w is not None]
    bns = [_bn.BNParams(g1, b1, rm1, rv1), _bn.BNParams(g2, b2, rm2, rv2)][:len(weights) - 1]
    return weights, bns


class FusedConvChainFunction(FusedFunction):
    """(x, w1, w2, w3, bn1 weight, bias, running_mean, running_var, bn2 weight, bias, running_mean,
    running_var, config) -> ``_layout``'s outputs; w3 and bn2's tensors are None for a two-convolution
    chain. config = (strides, paddings, ((use_batch_stats, eps) per BN))."""

    @staticmethod
    def compute(prims, x, w1, w2, w3, g1, b1, rm1, rv1, g2, b2, rm2, rv2, config):
        # The reference primitives (forward-mode AD) take the reference convolutions too.
        conv = conv_backend.CONV_REFERENCE if prims is backend.REFERENCE else conv_backend.conv_primitives(x.device)
        weights, bns = _split(x, w1, w2, w3, g1, b1, rm1, rv1, g2, b2, rm2, rv2)
        return _compute(prims, conv, x, weights, bns, config)

    @staticmethod
    def forward(x, w1, w2, w3, g1, b1, rm1, rv1, g2, b2, rm2, rv2, config):
        weights, bns = _split(x, w1, w2, w3, g1, b1, rm1, rv1, g2, b2, rm2, rv2)
        return _compute(backend.primitives(x.device), conv_backend.conv_primitives(x.device), x, weights, bns,
                        config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w1, w2, w3, g1, b1, _, _, g2, b2, _, _, config = inputs
        bns = len(config[2])
        out = _layout(output, bns)
        means = out["stats"][0::2]
        ctx.save_for_backward(x, w1, w2, w3, g1, b1, g2, b2, *means, *out["ys"], *out["coefs"])
        ctx.config = config
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_y, *_):
        if grad_y is None:
            return (None,) * N_INPUTS
        strides, paddings, bn_config = ctx.config
        saved = ctx.saved_tensors
        x, w1, w2, w3, g1, b1, g2, b2 = saved[:8]
        nb = len(bn_config)
        means, ys, coefs = saved[8:8 + nb], saved[8 + nb:8 + 2 * nb], saved[8 + 2 * nb:]
        invstds, scales, shifts = coefs[0::3], coefs[1::3], coefs[2::3]
        weights = [w for w in (w1, w2, w3) if w is not None]
        gammas, betas = (g1, g2)[:nb], (b1, b2)[:nb]
        need = ctx.needs_input_grad
        need_x, need_w = need[0], need[1:1 + len(weights)]
        need_gamma, need_beta = (need[4], need[8])[:nb], (need[5], need[9])[:nb]
        if _double_backward.wanted():
            grads = _differentiable_backward(grad_y, x, weights, gammas, betas, means, invstds, ctx.config,
                                             [need_x, *need_w, *need_gamma, *need_beta])
        else:
            grads = _backward(grad_y, x, weights, gammas, betas, ys, means, invstds, scales, shifts, ctx.config,
                              need_x, need_w, need_gamma, need_beta)
        grad_x, grad_ws, grad_gammas, grad_betas = grads
        grad_ws = list(grad_ws) + [None] * (3 - len(weights))
        grad_gammas, grad_betas = list(grad_gammas) + [None] * (2 - nb), list(grad_betas) + [None] * (2 - nb)
        return (grad_x, *grad_ws, grad_gammas[0], grad_betas[0], None, None, grad_gammas[1], grad_betas[1], None,
                None, None)


def _backward(grad_y, x, weights, gammas, betas, ys, means, invstds, scales, shifts, config, need_x, need_w,
              need_gamma, need_beta):
    """(grad_x, grad per weight, grad per BN weight, grad per BN bias): the module docstring's backward."""
    strides, paddings, bn_config = config
    prims, conv = backend.primitives(x.device), conv_backend.conv_primitives(x.device)
    dz = grad_y.contiguous(memory_format=torch.channels_last)  # the kernels' layout
    none4 = (None, None, None, None)
    grad_w = [None] * len(weights)
    grad_gamma, grad_beta = [None] * len(gammas), [None] * len(gammas)
    grad_x = None
    bn_grad = none4  # (y_i, A_i, B_i, C_i): BN_i's backward in conv_i's prologue; none for the last conv
    for i in reversed(range(len(weights))):
        inp = x if i == 0 else ys[i - 1]
        prologue = (None, None) if i == 0 else (scales[i - 1], shifts[i - 1])
        if need_w[i]:
            grad_w[i] = conv.conv_wgrad(inp, dz, list(weights[i].shape), strides[i], paddings[i], *prologue,
                                        *bn_grad)
        if i == 0:
            if need_x:
                grad_x, _, _ = conv.conv_dgrad(dz, weights[0], x.shape[2], x.shape[3], strides[0], paddings[0],
                                               *bn_grad, *none4)
            break
        j = i - 1  # the producer's BN
        g, sum_g, sum_gx = conv.conv_dgrad(dz, weights[i], inp.shape[2], inp.shape[3], strides[i], paddings[i],
                                           *bn_grad, ys[j], scales[j], shifts[j], means[j])
        use_batch_stats, _ = bn_config[j]
        d_gamma, d_beta, k_g, k_0, k_y = prims.bn_backward_finalize(sum_g, sum_gx, invstds[j], gammas[j],
                                                                    _bn.count_of(ys[j]), 0, use_batch_stats)
        grad_gamma[j] = _bn._as(d_gamma, gammas[j], need_gamma[j])
        grad_beta[j] = _bn._as(d_beta, betas[j], need_beta[j])
        # dy = k_g * dz + k_0 + k_y * (y - mean) = A * dz + B * y + C (the kernels' prologue form)
        bn_grad = (ys[j], k_g, k_y, torch.addcmul(k_0, k_y, means[j], value=-1.0))
        dz = g
    return grad_x, grad_w, grad_gamma, grad_beta


def _differentiable_backward(grad_y, x, weights, gammas, betas, means, invstds, config, needs):
    """_backward()'s result from eager operations, for a gradient with create_graph=True."""
    strides, paddings, bn_config = config
    nw, nb = len(weights), len(gammas)

    def output(x, *params):
        ws, gs, bs = params[:nw], params[nw:nw + nb], params[nw + nb:]
        h = x
        for i, w in enumerate(ws):
            y = F.conv2d(h, w, None, strides[i], paddings[i])
            if i == nw - 1:
                return y
            use_batch_stats, eps = bn_config[i]
            z = _double_backward.batch_norm(y, gs[i], bs[i], means[i], invstds[i], use_batch_stats, eps)
            h = _double_backward.activation(z, True, y)

    grads = _double_backward.gradients(output, (x, *weights, *gammas, *betas), grad_y, needs)
    return grads[0], grads[1:1 + nw], grads[1 + nw:1 + nw + nb], grads[1 + nw + nb:]


def fused_conv_chain(x: Tensor, weights: Sequence[Tensor], strides: Sequence[int], paddings: Sequence[int],
                     bns: Sequence[dict], return_stats: bool = False):
    """conv_L(relu(bn_{L-1}(... relu(bn_1(conv_1(x)))))) for L = 2 or 3 convolutions, the raw output of the last.

    With ``return_stats``: (y, mean, biased variance) of that output per channel, as the last
    convolution's epilogue computed them (float32), for its BatchNorm (``bn_add_relu(batch_stats=)``).

    ``weights``: (C_out, C_in, k, k) with k = 1 (padding 0) or 3 (padding 1), groups 1, dilation 1;
    ``strides`` 1 or 2 and ``paddings`` per convolution; ``bns``: L - 1 dicts with keys weight, bias,
    running_mean, running_var, num_batches_tracked, training, momentum, eps (nn.BatchNorm2d's
    semantics; running statistics are updated in place in training). x: (N, C, H, W) channels_last,
    float16 / bfloat16 / float32; CUDA, or CPU under TRITON_INTERPRET=1. Under autocast the
    convolutions run in the autocast dtype.
    """
    op = "fused_conv_chain"
    _bn.require(len(weights) in (2, 3) and len(bns) == len(weights) - 1 and len(strides) == len(weights)
                and len(paddings) == len(weights),
                lambda: f"{op}: expected 2 or 3 weights with a stride and padding each and one BatchNorm between "
                        f"consecutive convolutions, got {len(weights)} weights, {len(strides)} strides, "
                        f"{len(paddings)} paddings, {len(bns)} BatchNorms")
    _bn.check_activation(op, "x", x)
    cast = cast_for_conv(x, *weights)
    x, weights = cast[0], list(cast[1:])
    _bn.require(x.dtype in SUPPORTED_DTYPES, lambda: f"{op}: x must be float16, bfloat16 or float32, got {x.dtype}")
    why = conv_backend.runs_on(x.device)
    _bn.require(why is None, lambda: f"{op}: {why}")
    _bn.require(x.is_contiguous(memory_format=torch.channels_last),
                lambda: f"{op}: x must be channels_last-contiguous (the Triton convolutions read N, H, W, C), got "
                        f"strides {x.stride()} for shape {tuple(x.shape)}")
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    bn_config = []
    for i, w in enumerate(weights):
        name = f"weights[{i}]"
        _bn.require(isinstance(w, Tensor) and w.dim() == 4,
                    lambda: f"{op}: expected {name} to be a 4-D (C_out, C_in, KH, KW) tensor")
        _bn.require(w.shape[1] == channels,
                    lambda: f"{op}: {name} expects {w.shape[1]} input channels, its input has {channels} "
                            "(grouped convolutions are not covered)" if w.shape[1] and channels % w.shape[1] == 0
                    else f"{op}: {name} expects {w.shape[1]} input channels, its input has {channels}")
        _bn.require(w.dtype == x.dtype and w.device == x.device,
                    lambda: f"{op}: {name} is {w.dtype} on {w.device}, x {x.dtype} on {x.device}")
        k = w.shape[2]
        _bn.require(w.shape[2] == w.shape[3] and k in (1, 3),
                    lambda: f"{op}: {name} has kernel size {w.shape[2]}x{w.shape[3]}; the fused chain takes 1x1 or 3x3")
        _bn.require(strides[i] in (1, 2), lambda: f"{op}: stride {strides[i]} of {name} is not 1 or 2")
        _bn.require(paddings[i] == (k - 1) // 2,
                    lambda: f"{op}: padding {paddings[i]} of {name} ({k}x{k}) is not {(k - 1) // 2}")
        height = (height + 2 * paddings[i] - k) // strides[i] + 1
        width = (width + 2 * paddings[i] - k) // strides[i] + 1
        _bn.require(height > 0 and width > 0, lambda: f"{op}: input {tuple(x.shape)} is too small for {name}")
        channels = w.shape[0]
        if i < len(bns):
            bn = bns[i]
            params = _bn.BNParams(bn["weight"], bn["bias"], bn["running_mean"], bn["running_var"])
            use_batch_stats = bn["training"] or bn["running_mean"] is None
            prefix = f"bns[{i}] "
            _bn.check_bn_vectors(op, params, channels, x, prefix)
            _bn.require((params.running_mean is None) == (params.running_var is None),
                        lambda: f"{op}: {prefix}running_mean and {prefix}running_var must both be given or both None")
            if use_batch_stats:
                _bn.verify_batch_size(torch.Size([x.shape[0], channels, height, width]))
            bn_config.append((use_batch_stats, float(bn["eps"])))
    config = (tuple(int(s) for s in strides), tuple(int(p) for p in paddings), tuple(bn_config))
    w_args = list(weights) + [None] * (3 - len(weights))
    bn_args = []
    for bn in list(bns) + [None] * (2 - len(bns)):
        bn_args += [None] * 4 if bn is None else [bn["weight"], bn["bias"], bn["running_mean"], bn["running_var"]]
    with autocast_disabled(x):
        outputs = FusedConvChainFunction.call(x, *w_args, *bn_args, config)
    out = _layout(outputs, len(bns))
    for i, bn in enumerate(bns):
        if bn["training"] and bn["running_mean"] is not None:
            _bn.update_running_stats(bn["running_mean"], bn["running_var"], bn.get("num_batches_tracked"),
                                     out["stats"][2 * i], out["stats"][2 * i + 1], bn["momentum"])
    return (out["y"], out["last_mean"], out["last_var"]) if return_stats else out["y"]
