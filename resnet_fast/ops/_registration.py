"""Make the kernel primitives exist under torch.ops.resnet_fast, whatever was compiled.

The schemas are defined here, once, from ``primitives.SCHEMAS``, before the compiled
library loads; the library (csrc/) only registers CPU and, when built with CUDA, CUDA
kernels for them (TORCH_LIBRARY_IMPL). Missing kernels are filled with the torch
reference implementation: the CPU and CUDA keys when the library did not load, the CUDA
key when it was built without CUDA. Fake implementations let torch.compile and opcheck
trace them. The fused-convolution primitives (``primitives.CONV_SCHEMAS``) are defined here
too, with the reference as their CPU and CUDA kernels.
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


def _fake_bn_finalize(mean, var, weight, bias, eps, count, n):
    c = var.shape[0]
    table = (n, c) if n > 0 else (c,)
    return var.new_empty((c,)), var.new_empty((c,)), var.new_empty(table), var.new_empty(table)


def _fake_bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, count, n, use_batch_stats):
    c = invstd.shape[0]
    table = (n, c) if n > 0 else (c,)
    return (invstd.new_empty((c,)), invstd.new_empty((c,)), invstd.new_empty(table), invstd.new_empty(table),
            invstd.new_empty((c,)))


def _channels_last_empty(like, shape, dtype=None):
    return like.new_empty(shape, dtype=dtype or like.dtype).contiguous(memory_format=torch.channels_last)


def _conv_out(size, k, stride, padding):
    return (size + 2 * padding - k) // stride + 1


def _fake_conv_forward(x, weight, stride, padding, scale, shift):
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    y = _channels_last_empty(x, (n, c_out, _conv_out(h, kh, stride, padding), _conv_out(w, kw, stride, padding)))
    return y, x.new_empty((c_out,), dtype=torch.float32), x.new_empty((c_out,), dtype=torch.float32)


def _fake_conv_dgrad(dz, weight, height, width, stride, padding, y, coef_a, coef_b, coef_c, x_prev, scale_prev,
                     shift_prev, mean_prev):
    c_in = weight.shape[1]
    sums = (c_in,) if x_prev is not None else (0,)
    return (_channels_last_empty(dz, (dz.shape[0], c_in, height, width)),
            dz.new_empty(sums, dtype=torch.float32), dz.new_empty(sums, dtype=torch.float32))


def _fake_conv_wgrad(x, dz, weight_shape, stride, padding, scale, shift, y, coef_a, coef_b, coef_c):
    return _channels_last_empty(x, tuple(weight_shape))


_FAKES = {
    "bn_stats": _fake_bn_stats,
    "scale_shift_act": _fake_scale_shift_act,
    "scale_shift_act_backward_reduce": _fake_backward_reduce,
    "scale_shift_act_backward_apply": _fake_backward_apply,
    "bn_finalize": _fake_bn_finalize,
    "bn_backward_finalize": _fake_bn_backward_finalize,
    "conv_forward": _fake_conv_forward,
    "conv_dgrad": _fake_conv_dgrad,
    "conv_wgrad": _fake_conv_wgrad,
}


def register_primitives() -> None:
    """Schemas first (the compiled library only implements them), then the library, then the
    reference for each dispatch key the library left without a kernel, then the fakes."""
    lib = torch.library.Library("resnet_fast", "DEF")
    for name, schema in {**primitives.SCHEMAS, **primitives.CONV_SCHEMAS}.items():
        lib.define(name + schema)
    _libraries.append(lib)
    _extension.load()  # registers its CPU (and CUDA) kernels, if it loads
    # The convolution primitives have no C++ kernel: their CPU/CUDA kernels are the reference (the
    # Triton launchers run through the conv table, not through these op names).
    for name, fn in {**primitives.PRIMITIVES, **primitives.CONV_PRIMITIVES}.items():
        for key in ("CPU", "CUDA"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"resnet_fast::{name}", key):
                lib.impl(name, fn, key)
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"resnet_fast::{name}", fake)


register_primitives()
