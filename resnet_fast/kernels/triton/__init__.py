"""Triton kernels of the primitives (same signatures and semantics as resnet_fast/ops/primitives.py).

Each is a launcher with the primitive's signature, which the backend table
(resnet_fast/backend.py) calls in place of ``torch.ops.resnet_fast.<name>``. In plain eager
it reuses a plan per input signature and launches the compiled kernels directly
(``_launch.py``: ~6-17 us of host time per call); under torch.compile (or a dispatch mode)
it launches through ``wrap_triton``, so torch.compile traces into the launch; under the
Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) it calls the kernels eagerly.
"""
from .bn_finalize import bn_backward_finalize, bn_finalize
from .bn_stats import bn_stats
from .scale_shift_act import scale_shift_act
from .scale_shift_act_backward import scale_shift_act_backward_apply, scale_shift_act_backward_reduce

__all__ = ["bn_stats", "scale_shift_act", "scale_shift_act_backward_reduce", "scale_shift_act_backward_apply",
           "bn_finalize", "bn_backward_finalize"]
