"""Eager PyTorch compositions of the fused ops: the oracle every backend is tested against.

Same signatures as the functional API in ``resnet_fast.ops``. Running statistics follow
nn.BatchNorm2d: ``num_batches_tracked`` is incremented in training and ``momentum=None``
uses the cumulative average 1 / num_batches_tracked.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def batch_norm(x: Tensor, weight, bias, running_mean, running_var, *, training: bool, momentum: Optional[float],
               eps: float, num_batches_tracked: Optional[Tensor] = None) -> Tensor:
    """nn.BatchNorm2d.forward as a function."""
    factor = 0.0 if momentum is None else momentum
    if training and running_mean is not None and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / float(num_batches_tracked)
    use_batch_stats = training or running_mean is None
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, eps)


def _identity(identity, identity_bn, training, momentum, eps):
    if identity_bn is None:
        return identity
    weight, bias, running_mean, running_var, *rest = identity_bn
    return batch_norm(identity, weight, bias, running_mean, running_var, training=training, momentum=momentum,
                      eps=eps, num_batches_tracked=rest[0] if rest else None)


def conv_bn_relu(x, weight, bn_weight, bn_bias, running_mean, running_var, *, stride=1, padding=0, dilation=1,
                 groups=1, training, momentum=0.1, eps=1e-5, relu=True, num_batches_tracked=None, group_name="",
                 residual=None):
    y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    out = batch_norm(y, bn_weight, bn_bias, running_mean, running_var, training=training, momentum=momentum,
                     eps=eps, num_batches_tracked=num_batches_tracked)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


def bn_relu(x, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5, relu=True,
            num_batches_tracked=None, group_name=""):
    out = batch_norm(x, weight, bias, running_mean, running_var, training=training, momentum=momentum, eps=eps,
                     num_batches_tracked=num_batches_tracked)
    return F.relu(out) if relu else out


def bn_relu_conv(y, bn_weight, bn_bias, running_mean, running_var, weight, *, stride=1, padding=0, dilation=1,
                 groups=1, training, momentum=0.1, eps=1e-5, num_batches_tracked=None, group_name=""):
    a = F.relu(batch_norm(y, bn_weight, bn_bias, running_mean, running_var, training=training, momentum=momentum,
                          eps=eps, num_batches_tracked=num_batches_tracked))
    return F.conv2d(a, weight, None, stride, padding, dilation, groups)


def bn_add_relu(y, weight, bias, running_mean, running_var, identity, *, training, momentum=0.1, eps=1e-5,
                relu=True, num_batches_tracked=None, identity_bn: Optional[Sequence] = None, group_name=""):
    out = batch_norm(y, weight, bias, running_mean, running_var, training=training, momentum=momentum, eps=eps,
                     num_batches_tracked=num_batches_tracked)
    out = out + _identity(identity, identity_bn, training, momentum, eps)
    return F.relu(out) if relu else out


def squeeze_excite(y, weight, bias, running_mean, running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, identity,
                   *, training, momentum=0.1, eps=1e-5, relu=True, num_batches_tracked=None,
                   identity_bn: Optional[Sequence] = None, group_name=""):
    """timm's SEModule after bn3, before the residual add (SE-ResNet / SE-ResNeXt)."""
    b = batch_norm(y, weight, bias, running_mean, running_var, training=training, momentum=momentum, eps=eps,
                   num_batches_tracked=num_batches_tracked)
    squeeze = b.mean((2, 3), keepdim=True)
    fc1 = fc1_weight if fc1_weight.dim() == 4 else fc1_weight[:, :, None, None]
    fc2 = fc2_weight if fc2_weight.dim() == 4 else fc2_weight[:, :, None, None]
    gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(squeeze, fc1, fc1_bias)), fc2, fc2_bias))
    out = b * gate + _identity(identity, identity_bn, training, momentum, eps)
    return F.relu(out) if relu else out
