"""Define the kernel primitives under torch.ops.resnet_fast, whatever was compiled.

The schemas are declared once, in ``primitives.SCHEMAS``, and defined here; the compiled
library (csrc/) only implements them (``TORCH_LIBRARY_IMPL`` for the CPU and, when built
with CUDA, the CUDA key). A key without a compiled kernel gets the torch reference
implementation: every key when the library did not load, CUDA when it was built without
CUDA kernels. Fake implementations let torch.compile and opcheck trace every primitive.
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


def _per_sample_shape(c: int, n: int) -> tuple[int, ...]:
    return (n, c) if n > 0 else (c,)


def _fake_bn_finalize(mean, var, weight, bias, eps, count, n):
    c = mean.shape[0]
    return (torch.empty_like(mean), torch.empty_like(mean), mean.new_empty(_per_sample_shape(c, n)),
            mean.new_empty(_per_sample_shape(c, n)))


def _fake_bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, count, n, use_batch_stats):
    c = invstd.shape[0]
    return (torch.empty_like(invstd), torch.empty_like(invstd), invstd.new_empty(_per_sample_shape(c, n)),
            invstd.new_empty(_per_sample_shape(c, n)), torch.empty_like(invstd))


_FAKES = {
    "bn_stats": _fake_bn_stats,
    "scale_shift_act": _fake_scale_shift_act,
    "scale_shift_act_backward_reduce": _fake_backward_reduce,
    "scale_shift_act_backward_apply": _fake_backward_apply,
    "bn_finalize": _fake_bn_finalize,
    "bn_backward_finalize": _fake_bn_backward_finalize,
}


def _has_schema(qualname: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
    except RuntimeError:
        return False
    return True


def register_primitives() -> None:
    # The library first: its kernels register for names that may not be defined yet, which
    # the dispatcher allows; the definitions below then give them their schemas.
    loaded = _extension.load()
    cuda_kernels = _extension.has_cuda_kernels()
    definitions = torch.library.Library("resnet_fast", "FRAGMENT")
    _libraries.append(definitions)
    for name, schema in primitives.SCHEMAS.items():
        if not _has_schema(f"resnet_fast::{name}"):  # (a library built before the schemas moved here)
            definitions.define(name + schema)
    for name, fn in primitives.PRIMITIVES.items():
        qualname = f"resnet_fast::{name}"
        for key, compiled in (("CPU", loaded), ("CUDA", cuda_kernels)):
            if not (compiled and torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)):
                definitions.impl(name, fn, key)
        torch.library.register_fake(qualname, _FAKES[name])


register_primitives()
