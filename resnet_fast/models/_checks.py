"""Refusing a bad input at model entry, before any running statistic changes.

The fused ops check their own inputs, but an error raised by the op of block k comes
after blocks 1..k-1 have updated their running statistics. The models therefore check,
before the stem runs:

* rank 4 and the channel count of the stem convolution (ValueError naming the shape);
* that no feature map would be empty (ValueError naming the input size);
* that no BatchNorm using batch statistics would see one value per channel: the same
  ValueError as PyTorch's BatchNorm, naming the size of the first such BatchNorm input,
  which for a batch of one is usually the last stage's 1x1 map, not the stem's.

So an input refused for any of these reasons leaves every running statistic (and
``num_batches_tracked``) as it was. Other failures (dtype or device mismatches) raise in
the stem convolution, before the first statistic is touched.

The feature-map sizes depend only on (H, W) and the convolutions' geometry, so each model
caches, per input size, the smallest side and area of its BatchNorm inputs; the full walk
runs again only when one of them could fail (a map of one value, a batch of one). A model
whose convolutions are replaced after its first forward keeps the old sizes: the early
error may then be missed (the op or convolution that fails still raises, later).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ._fusion import uses_batch_stats

_CACHE_SIZE = 64


def check_input(model: nn.Module, x, in_channels: int, norm_sizes: Callable[[int, int], list]) -> None:
    """Raise (TypeError / ValueError) if ``model`` would refuse ``x`` somewhere; see the module docstring."""
    name = type(model).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a Tensor input of shape (N, {in_channels}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D input of shape (N, {in_channels}, H, W), "
                         f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c != in_channels:
        raise ValueError(f"{name}: expected an input of shape (N, {in_channels}, H, W) "
                         f"({in_channels} channels), got shape {tuple(x.shape)} ({c} channels)")
    if n == 0:
        return  # an empty batch is refused (or not) by the ops exactly as by eager BatchNorm
    if torch.compiler.is_compiling():  # traced once, no cost in the compiled graph (and H, W may be symbolic)
        _check_sizes(name, n, h, w, norm_sizes(h, w))
        return
    cache = getattr(model, "_feature_size_cache", None)
    if cache is None or len(cache) >= _CACHE_SIZE:
        cache = model._feature_size_cache = {}
    smallest = cache.get((h, w))
    if smallest is None:
        sizes = norm_sizes(h, w)
        smallest = cache[(h, w)] = (min((min(fh, fw) for *_, fh, fw in sizes), default=1),
                                    min((fh * fw for *_, fh, fw in sizes), default=2))
    side, area = smallest
    if side < 1 or n * area == 1:
        _check_sizes(name, n, h, w, norm_sizes(h, w))


def _check_sizes(name: str, n: int, h: int, w: int, sizes: list) -> None:
    for norm, channels, fh, fw in sizes:
        if fh < 1 or fw < 1:
            raise ValueError(f"{name}: input of spatial size {h}x{w} is too small: a feature map would be {fh}x{fw}")
        if n * fh * fw == 1 and uses_batch_stats(norm):
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{torch.Size([n, channels, fh, fw])}")
