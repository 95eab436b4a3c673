"""Functional API of the fused ops: each is one torch.autograd.Function over the kernel primitives
(``torch.ops.resnet_fast.<primitive>``, ops/primitives.py).

Semantics: ../DESIGN.md section 2. The eager compositions they equal are in
``resnet_fast.ops.reference``.
"""
from . import _registration  # noqa: F401  (the kernel primitives first: the ops call them)
from .bn_add_relu import bn_add_relu
from .bn_relu import bn_relu
from .bn_relu_conv import bn_relu_conv
from .conv_bn_relu import conv_bn_relu
from .fused_conv_chain import fused_conv_chain
from .squeeze_excite import squeeze_excite

__all__ = ["conv_bn_relu", "bn_relu_conv", "bn_add_relu", "squeeze_excite", "bn_relu", "fused_conv_chain"]
