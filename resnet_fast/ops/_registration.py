"""Make the kernel primitives exist under torch.ops.resnet_fast, whatever was compiled.

The compiled library (csrc/ops.cpp) defines their schemas with CPU and, when built
with CUDA, CUDA kernels. Missing pieces are filled with the torch reference
implementation: all of it when the library did not load, the CUDA key when it was
built without CUDA. Fake implementations let torch.compile and opcheck trace them.
"""
from __future__ import annotations

import torch

from .. import _extension
from . import primitives
from .primitives import acc_dtype

_libraries = []  # torch.library.Library objects must stay alive


def _fake_bn_stats(y):
    acc = acc_dtype(y.dtype)
    c = y.shape[1]
    return y.new_empty((c,), dtype=acc), y.new_empty((c,), dtype=acc), y.new_empty((y.shape[0], c), dtype=acc)


def _fake_scale_shift_act(y, scale, shift, residual, res_scale, res_shift, relu):
    return torch.empty_like(y)


def _fake_backward_reduce(grad_out, y, scale, shift, residual, res_scale, res_shift, relu, center, res_center):
    acc = acc_dtype(y.dtype)
    n, c = y.shape[0], y.shape[1]
    res = y.new_empty((c,) if res_center is not None else (0,), dtype=acc)
    return y.new_empty((n, c), dtype=acc), y.new_empty((n, c), dtype=acc), res


def _fake_backward_apply(grad_out, y, scale, shift, residual, res_scale, res_shift, relu, k_g, k_0, k_y, center,
                         res_k_g, res_k_0, res_k_r, res_center):
    grad_res = torch.empty_like(y) if res_k_g is not None else y.new_empty((0,))
    return torch.empty_like(y), grad_res


def _fake_bn_act_forward(y, weight, bias, running_mean, running_var, residual, res_weight, res_bias,
                         res_running_mean, res_running_var, residual_bn, use_batch_stats, eps, relu):
    stats = y.new_empty((y.shape[1],), dtype=acc_dtype(y.dtype))
    res = [torch.empty_like(stats) if residual_bn else stats.new_empty((0,)) for _ in range(3)]
    return (torch.empty_like(y), torch.empty_like(stats), torch.empty_like(stats), torch.empty_like(stats), *res)


def _fake_bn_act_backward(grad_out, y, weight, bias, mean, invstd, residual, res_weight, res_bias, res_mean,
                          res_invstd, use_batch_stats, relu, needs):
    def grad(wanted, like):
        return torch.empty_like(like) if wanted and like is not None else y.new_empty((0,))

    return (grad(needs[0], y), grad(needs[1], weight), grad(needs[2], bias),
            grad(needs[3] and residual is not None, y), grad(needs[4] and res_mean is not None, res_weight),
            grad(needs[5] and res_mean is not None, res_bias))


# Ops of the compiled CPU library only (csrc/cpu/bn_act.cpp), used by ops/_bn.py's CPU path.
_CPU_FUSED_FAKES = {
    "bn_act_forward": _fake_bn_act_forward,
    "bn_act_backward": _fake_bn_act_backward,
}

_FAKES = {
    "bn_stats": _fake_bn_stats,
    "scale_shift_act": _fake_scale_shift_act,
    "scale_shift_act_backward_reduce": _fake_backward_reduce,
    "scale_shift_act_backward_apply": _fake_backward_apply,
}


def register_primitives() -> None:
    loaded = _extension.load()
    if not loaded:
        lib = torch.library.Library("resnet_fast", "DEF")
        for name, schema in primitives.SCHEMAS.items():
            lib.define(name + schema)
            lib.impl(name, primitives.PRIMITIVES[name], "CompositeExplicitAutograd")
        _libraries.append(lib)
    elif not _extension.has_cuda_kernels():
        lib = torch.library.Library("resnet_fast", "IMPL")
        for name, fn in primitives.PRIMITIVES.items():
            lib.impl(name, fn, "CUDA")
        _libraries.append(lib)
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"resnet_fast::{name}", fake)
    if loaded:
        for name, fake in _CPU_FUSED_FAKES.items():
            torch.library.register_fake(f"resnet_fast::{name}", fake)


register_primitives()
