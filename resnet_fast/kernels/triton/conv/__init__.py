"""Fused convolution kernels (Triton): Conv-BN-ReLU with the BN+ReLU in the convolution's prologue and the BN
statistics in its epilogue, and the matching backward (dgrad with the BN backward in its prologue and the
producer's dReLU in its epilogue; split-K wgrad recomputing both operands). channels_last activations,
1x1 (stride 1, 2) and 3x3 (stride 1, 2, padding 1), groups 1. NOTES.md has the design and compile records.

One kernel family per module, kernel next to its launcher:
  forward.py   conv_forward  -> (y, mean, var)
  partials.py  merge_welford_partials, merge_sum_partials (fixed-order tile merges)
  dgrad.py     conv_dgrad    -> (g, sum g, sum g * (x_prev - mean_prev))
  wgrad.py     conv_wgrad    -> dW
The per-channel BN finalize ((mean, var) -> invstd, scale/shift, running statistics) is the shared
``bn_finalize`` primitive, not repeated here.
"""
from .dgrad import conv_dgrad
from .forward import conv_forward
from .partials import merge_sum_partials, merge_welford_partials
from .wgrad import conv_wgrad

__all__ = ["conv_forward", "conv_dgrad", "conv_wgrad", "merge_welford_partials", "merge_sum_partials"]
