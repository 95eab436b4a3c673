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
"""
from __future__ import annotations

from typing import Callable

import torch

from ._fusion import uses_batch_stats


def check_input(model_name: str, x, in_channels: int, norm_sizes: Callable[[int, int], list]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name}: expected a Tensor input of shape (N, {in_channels}, H, W), "
                        f"got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{model_name}: expected a 4-D input of shape (N, {in_channels}, H, W), "
                         f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c != in_channels:
        raise ValueError(f"{model_name}: expected an input of shape (N, {in_channels}, H, W) "
                         f"({in_channels} channels), got shape {tuple(x.shape)} ({c} channels)")
    if n == 0:
        return  # an empty batch is refused (or not) by the ops exactly as by eager BatchNorm
    for norm, channels, fh, fw in norm_sizes(h, w):
        if fh < 1 or fw < 1:
            raise ValueError(f"{model_name}: input of spatial size {h}x{w} is too small: a feature map "
                             f"would be {fh}x{fw}")
        if n * fh * fw == 1 and uses_batch_stats(norm):
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{torch.Size([n, channels, fh, fw])}")
