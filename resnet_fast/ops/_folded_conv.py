"""Inference convolution with BatchNorm folded in: act(conv(x, w * a) + c0 [+ residual]).

a = gamma / sqrt(running_var + eps) and c0 = beta - running_mean * a (``_bn.running_normalized``).
What follows the convolution is its epilogue, and where it runs decides the speed:

* CPU, float32, oneDNN available (backends "auto" and "cpu"): the whole thing is one
  oneDNN convolution whose post-ops add the bias c0, the residual and apply the ReLU while
  the output tile is still in cache (``torch.ops.mkldnn._convolution_pointwise``, the op
  Inductor's CPU freezing pass emits). On ResNet-50 inference that removes every pass
  over the activations besides the convolutions and the max-pool: a separate epilogue
  pass costs as much again as reading the tensor, plus first-touch page faults on its
  freshly allocated output.
* otherwise (GPU, other dtypes, backend "reference"): the convolution without bias, then
  one ``scale_shift_act`` pass that adds c0 in fp32 (not rounded to the conv dtype), the
  residual, and applies the ReLU.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import backend
from . import _bn

Tensor = torch.Tensor


def fold_weight(weight: Tensor, a: Tensor) -> Tensor:
    """weight * a per output channel, computed in a's (fp32 or wider) dtype, stored in weight's."""
    return (weight.to(a.dtype) * a.view(-1, 1, 1, 1)).to(weight.dtype)


@functools.lru_cache(maxsize=None)
def _onednn_pointwise_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def uses_onednn_epilogue(x: Tensor) -> bool:
    """Whether ``folded_conv`` on ``x`` runs as one oneDNN convolution with post-ops."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled
            and backend.get_backend() in ("auto", "cpu") and _onednn_pointwise_available())


def folded_conv(x: Tensor, weight: Tensor, norm: "_bn.Normalized", stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, relu: bool, residual: Optional[Tensor]) -> Tensor:
    """act(conv2d(x, fold_weight(weight, norm.a)) + norm.c0 [+ residual]) in x's memory format."""
    w = fold_weight(weight, norm.a)
    if uses_onednn_epilogue(x):
        # oneDNN picks its layout from the weight's: keep it in x's so the output is in x's.
        fmt = torch.contiguous_format if x.is_contiguous() else torch.channels_last
        w, bias = w.contiguous(memory_format=fmt), norm.c0.to(x.dtype)
        args = (w, bias, list(padding), list(stride), list(dilation), groups)
        unary = "relu" if relu else "none"
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *args, unary, [], "")
        residual = _bn.match_layout(residual, x)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", 1.0,
                                                              unary if relu else None, [], "")
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    residual = None if residual is None else _bn.match_layout(residual, y)
    n = y.shape[0]
    return _bn.prim("scale_shift_act", y)(y, _bn.expand_nc(torch.ones_like(norm.a), n), _bn.expand_nc(norm.c0, n),
                                          residual, None, None, relu)
