"""Inference convolution with BatchNorm folded in: act(conv(x, w * a) + c0 [+ residual]).

a = gamma / sqrt(running_var + eps) and c0 = beta - running_mean * a (the ``bn_finalize`` primitive).
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

Folding is a pass over the weight on every call; inside ``resnet_fast.inference_cache()``
the folded (and, for channels_last inputs, oneDNN-prepacked) weight is built once.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _weight_cache, backend
from . import _bn
from ._function import transform_active

Tensor = torch.Tensor


def fold_weight(weight: Tensor, a: Tensor) -> Tensor:
    """weight * a per output channel, computed in a's (fp32 or wider) dtype, stored in weight's."""
    return (weight.to(a.dtype) * a.view(-1, 1, 1, 1)).to(weight.dtype)


@functools.lru_cache(maxsize=None)
def _onednn_pointwise_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def uses_onednn_epilogue(x: Tensor) -> bool:
    """Whether ``folded_conv`` on ``x`` runs as one oneDNN convolution with post-ops (not under a
    transform: the oneDNN op has no forward-mode formula and would drop the tangent)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled
            and backend.get_backend() in ("auto", "cpu") and _onednn_pointwise_available()
            and not transform_active())


def conv_weight(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int) -> Tensor:
    """``weight`` as ``onednn_conv`` takes it for inputs like ``x``: in an ``inference_cache()``
    scope and for channels_last inputs, prepacked once in oneDNN's blocked layout (a plain
    weight is reordered on every call); otherwise in x's layout (oneDNN picks the output's
    layout from the weight's)."""
    if channels_last(x) and _weight_cache.active():
        return torch.ops.mkldnn._reorder_convolution_weight(weight.contiguous(memory_format=torch.channels_last),
                                                            list(padding), list(stride), list(dilation), groups,
                                                            list(x.shape))
    return weight.contiguous(memory_format=torch.channels_last if channels_last(x) else torch.contiguous_format)


def channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def onednn_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, relu: bool, residual: Optional[Tensor]) -> Tensor:
    """act(conv2d(x, weight, bias) [+ residual]) as one oneDNN convolution with post-ops, in x's
    memory format (``uses_onednn_epilogue(x)`` must hold; ``weight`` from ``conv_weight``)."""
    args = (weight, bias, list(padding), list(stride), list(dilation), groups)
    unary = "relu" if relu else "none"
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, *args, unary, [], "")
    residual = _bn.match_layout(residual, x)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", 1.0, unary if relu else None,
                                                          [], "")


def folded_conv(x: Tensor, weight: Tensor, params: "_bn.BNParams", eps: float, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool,
                residual: Optional[Tensor]) -> Tensor:
    """act(conv2d(x, fold_weight(weight, a)) + c0 [+ residual]) in x's memory format, a and c0 from the
    running statistics. The folded weight is reused within an ``inference_cache()``."""
    onednn = uses_onednn_epilogue(x)
    prims = backend.primitives(x.device)

    def fold():
        acc = _bn.acc_dtype(x.dtype)
        _, _, a, c0 = prims.bn_finalize(params.running_mean.to(acc), params.running_var.to(acc), params.weight,
                                        params.bias, eps, 0, 0)
        w = fold_weight(weight, a)
        if onednn:
            return conv_weight(x, w, stride, padding, dilation, groups), c0.to(x.dtype)
        return w, c0

    config = ("folded", eps, onednn, channels_last(x), x.dtype, tuple(stride), tuple(padding), tuple(dilation),
              groups)
    tensors = (weight, params.weight, params.bias, params.running_mean, params.running_var)
    w, bias = _weight_cache.cached(tensors, config, fold)
    if onednn:
        return onednn_conv(x, w, bias, stride, padding, dilation, groups, relu, residual)
    y = F.conv2d(x, w, None, stride, padding, dilation, groups)
    residual = None if residual is None else _bn.match_layout(residual, y)
    n = y.shape[0]
    # bias is c0 in fp32 (not rounded to the conv dtype); the pass also adds the residual and the ReLU.
    shift = bias.unsqueeze(0).expand(n, -1).contiguous()
    return prims.scale_shift_act(y, torch.ones_like(shift), shift, residual, None, None, relu)
