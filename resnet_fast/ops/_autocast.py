"""Autocast around the fused ops.

Custom ops are not autocast-aware: under autocast the inputs arrive in whatever dtype
the previous op produced. Convolution inputs are cast as aten's autocast would
(``cast_for_conv``); the op itself then runs with autocast off so the convolution
inside it does not cast again, and BatchNorm arithmetic stays in fp32 as eager's does.
"""
from __future__ import annotations

import contextlib

import torch


def autocast_dtype(t: torch.Tensor):
    """The dtype autocast would run a convolution on ``t`` in, or None when autocast is off."""
    device_type = t.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_for_conv(*tensors):
    dtype = autocast_dtype(tensors[0])
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def autocast_disabled(t: torch.Tensor):
    if t.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(t.device.type):
        return torch.autocast(t.device.type, enabled=False)
    return contextlib.nullcontext()
