"""The fused-convolution primitives (schemas: resnet_fast/ops/primitives.py CONV_SCHEMAS) on the Triton launchers.

Thin adapters from the primitive's signature (positional, optional outputs as empty tensors) to the
launchers' (keyword prologue arguments, None for an absent output). ``conv_backend.conv_primitives``
puts them in the conv table; the launchers hand their kernels to ``wrap_triton`` on a GPU, so
torch.compile traces into the launches.
"""
from __future__ import annotations

from typing import Optional

import torch

from .dgrad import conv_dgrad as _dgrad
from .forward import conv_forward as _forward
from .wgrad import conv_wgrad as _wgrad

Tensor = torch.Tensor


def conv_forward(x: Tensor, weight: Tensor, stride: int, padding: int, scale: Optional[Tensor],
                 shift: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(x, weight, stride, padding, scale=scale, shift=shift)


def conv_dgrad(dz: Tensor, weight: Tensor, height: int, width: int, stride: int, padding: int, y: Optional[Tensor],
               coef_a: Optional[Tensor], coef_b: Optional[Tensor], coef_c: Optional[Tensor],
               x_prev: Optional[Tensor], scale_prev: Optional[Tensor], shift_prev: Optional[Tensor],
               mean_prev: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    g, sum_g, sum_gx = _dgrad(dz, weight, (height, width), stride, padding, y=y, coef_a=coef_a, coef_b=coef_b,
                              coef_c=coef_c, x_prev=x_prev, scale_prev=scale_prev, shift_prev=shift_prev,
                              mean_prev=mean_prev)
    if sum_g is None:
        sum_g, sum_gx = dz.new_empty((0,), dtype=torch.float32), dz.new_empty((0,), dtype=torch.float32)
    return g, sum_g, sum_gx


def conv_wgrad(x: Tensor, dz: Tensor, weight_shape: list[int], stride: int, padding: int, scale: Optional[Tensor],
               shift: Optional[Tensor], y: Optional[Tensor], coef_a: Optional[Tensor], coef_b: Optional[Tensor],
               coef_c: Optional[Tensor]) -> Tensor:
    return _wgrad(x, dz, tuple(weight_shape), stride, padding, scale=scale, shift=shift, y=y, coef_a=coef_a,
                  coef_b=coef_b, coef_c=coef_c)
