"""Functional API of the fused ops (each also registered as ``torch.ops.resnet_fast.<op>``)."""
from . import _registration  # noqa: F401  (primitives first: the ops call them)
from .bn_relu import bn_relu

__all__ = ["bn_relu"]
