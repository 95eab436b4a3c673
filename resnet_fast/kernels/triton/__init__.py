"""Triton kernels of the primitives (same signatures and semantics as resnet_fast/ops/primitives.py).

Each is registered as ``resnet_fast::triton_<name>`` (torch.library.triton_op, so
torch.compile sees the kernels) and called through it on GPU; under the Triton
interpreter (``TRITON_INTERPRET=1``, CPU tensors) the launchers run eagerly.
"""
from .bn_finalize import bn_backward_finalize, bn_finalize
from .bn_stats import bn_stats
from .scale_shift_act import scale_shift_act
from .scale_shift_act_backward import scale_shift_act_backward_apply, scale_shift_act_backward_reduce

__all__ = ["bn_stats", "scale_shift_act", "scale_shift_act_backward_reduce", "scale_shift_act_backward_apply",
           "bn_finalize", "bn_backward_finalize"]
