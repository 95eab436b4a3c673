"""squeeze_excite: the Squeeze-Excitation block tail of SE-ResNet/SE-ResNeXt (timm's layout).

    b    = bn(y)
    gate = sigmoid(fc2(relu(fc1(mean_hw(b)))))       fc1/fc2: 1x1 convs with bias
    out  = relu(b * gate + identity')                identity' = identity or bn_id(identity)

The squeeze mean_hw(b) = a * mean_hw(y) + c0 comes from the per-(n, c) means that the
BN statistics pass over y yields anyway (``bn_stats``'s sample_mean), so SE costs no
extra pass; the tiny MLP runs on (N, C) in fp32. ``_block_tail.SqueezeExciteFunction``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _block_tail, _bn

Tensor = torch.Tensor


def squeeze_excite(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                   running_var: Optional[Tensor], fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                   fc2_bias: Optional[Tensor], identity: Tensor, *, training: bool, momentum: Optional[float] = 0.1,
                   eps: float = 1e-5, relu: bool = True, num_batches_tracked: Optional[Tensor] = None,
                   identity_bn: Optional[Sequence] = None, group_name: str = "") -> Tensor:
    """relu(b * sigmoid(fc2(relu(fc1(mean_hw(b))))) + identity'), b = F.batch_norm(y, ...).

    fc1_weight: (C_r, C, 1, 1) or (C_r, C); fc2_weight: (C, C_r, 1, 1) or (C, C_r).
    ``identity_bn`` and the running statistics behave as in :func:`bn_add_relu`.
    """
    channels = y.shape[1] if y.dim() == 4 else -1
    _bn.require(fc1_weight.dim() in (2, 4) and fc1_weight.shape[1] == channels,
                 lambda: f"squeeze_excite: fc1_weight must be (C_r, {channels}[, 1, 1]), got {tuple(fc1_weight.shape)}")
    hidden = fc1_weight.shape[0]
    _bn.require(fc2_weight.dim() in (2, 4) and tuple(fc2_weight.shape[:2]) == (channels, hidden),
                 lambda: f"squeeze_excite: fc2_weight must be ({channels}, {hidden}[, 1, 1]), "
                         f"got {tuple(fc2_weight.shape)}")
    bn = (weight, bias, running_mean, running_var, num_batches_tracked)
    se = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return _block_tail.call("squeeze_excite", _block_tail.SqueezeExciteFunction, y, bn, identity, identity_bn, se, training=training,
                            momentum=momentum, eps=eps, relu=relu, group_name=group_name)
