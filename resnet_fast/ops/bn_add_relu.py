"""bn_add_relu: relu(batch_norm(y) + identity), the tail of every BasicBlock/Bottleneck.

``identity`` is the block input, or the raw output of the downsample convolution
normalized by its own BatchNorm in the same pass (``identity_bn``). One read of y and
identity, one write of out. ``_block_tail.BnAddReluFunction``; see ``_block_tail`` for
its outputs and what backward saves.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _bn, _block_tail
from .primitives import acc_dtype

Tensor = torch.Tensor


def bn_add_relu(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], identity: Tensor, *, training: bool,
                momentum: Optional[float] = 0.1, eps: float = 1e-5, relu: bool = True,
                num_batches_tracked: Optional[Tensor] = None, identity_bn: Optional[Sequence] = None,
                group_name: str = "", batch_stats: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
    """relu(F.batch_norm(y, ...) + identity'), identity' = identity or F.batch_norm(identity, *identity_bn).

    ``identity_bn`` = (weight, bias, running_mean, running_var[, num_batches_tracked]) of the
    downsample BatchNorm, which shares ``training``, ``momentum`` and ``eps``. Running
    statistics are updated in place as nn.BatchNorm2d does; ``group_name`` synchronizes
    the statistics across a process group (SyncBatchNorm). ``batch_stats``: y's batch
    (mean, biased variance) per channel in float32 (float64 for float64 y), when y's producer
    computed them (the fused convolution chain does, in its epilogue): the op then skips its
    pass over y for them. Used only where batch statistics are (and without ``group_name``).
    """
    bn = (weight, bias, running_mean, running_var, num_batches_tracked)
    stats = (None, None)
    if batch_stats is not None and not group_name and (training or running_mean is None):
        stats = tuple(batch_stats)
        for name, t in zip(("mean", "variance"), stats):
            _bn.check_channel_vector("bn_add_relu", f"batch_stats {name}", t, y.shape[1], y)
            _bn.require(t.dtype == acc_dtype(y.dtype),
                        lambda: f"bn_add_relu: batch_stats {name} must be {acc_dtype(y.dtype)} for {y.dtype} y, "
                                f"got {t.dtype}")
    return _block_tail.call("bn_add_relu", _block_tail.BnAddReluFunction, y, bn, identity, identity_bn, stats,
                            training=training, momentum=momentum, eps=eps, relu=relu, group_name=group_name)
