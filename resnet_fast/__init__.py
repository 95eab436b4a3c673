"""resnet_fast: fused Conv-BN-ReLU, residual BN-add-ReLU and Squeeze-Excitation for ResNets."""
from . import ops
from .backend import get_backend, set_backend

__version__ = "0.1.0"
__all__ = ["ops", "set_backend", "get_backend", "__version__"]
