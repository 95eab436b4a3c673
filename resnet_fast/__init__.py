"""resnet_fast: fused Conv-BN-ReLU, residual BN-add-ReLU and Squeeze-Excitation for ResNets."""
from . import ops
from .backend import get_backend, set_backend
from .conv_backend import get_conv_backend, set_conv_backend
from ._weight_cache import inference_cache
from . import models
from .models import (convert, get_model, list_models, preact_resnet18, preact_resnet34, preact_resnet50,
                     preact_resnet101, preact_resnet152, resnet18, resnet34, resnet50, resnet101, resnet152,
                     resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, se_resnet18, se_resnet34, se_resnet50,
                     se_resnet101, se_resnet152, se_resnext50_32x4d, se_resnext101_32x4d, wide_resnet50_2,
                     wide_resnet101_2)

__version__ = "0.1.0"
__all__ = ["ops", "set_backend", "get_backend", "set_conv_backend", "get_conv_backend", "inference_cache", "__version__"]
__all__ += ["models", "convert", "get_model", "list_models"] + models.list_models()
