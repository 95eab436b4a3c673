"""``convert(model)``: an existing torchvision ResNet onto the fused ops, weights and all.

torchvision's ResNet / BasicBlock / Bottleneck instances get this package's classes,
which have the same attributes and constructor, so nothing else changes: the same
parameter and buffer objects (an optimizer built before keeps working), state_dict keys,
device, dtype, memory format, train/eval flags, requires_grad, hooks and frozen or
synchronized BatchNorms. Only ``forward`` differs, and it computes the same function.

Works on a whole ResNet or on any module that contains torchvision blocks (e.g. a
detection backbone, whose FrozenBatchNorm2d layers the fused ops run as eval-mode BN).
"""
from __future__ import annotations

import copy

from torch import nn

from .blocks import BasicBlock, Bottleneck
from .resnet import ResNet

_TORCHVISION_MODULE = "torchvision.models.resnet"
_FUSED = {"ResNet": ResNet, "BasicBlock": BasicBlock, "Bottleneck": Bottleneck}


def _torchvision_modules(model: nn.Module) -> list[nn.Module]:
    # Exact classes only: a subclass (e.g. torchvision's quantizable ResNet) may compute something else.
    return [m for m in model.modules()
            if type(m).__module__ == _TORCHVISION_MODULE and type(m).__name__ in _FUSED]


def _adopt(module: nn.Module) -> None:
    """Give a torchvision module the attributes this package's class has beyond torchvision's."""
    module.__class__ = _FUSED[type(module).__name__]
    if isinstance(module, (BasicBlock, Bottleneck)) and not hasattr(module, "se"):
        module.se = None
    if isinstance(module, ResNet):
        module._se_layer = None
        module.num_features = module.layer4[-1].expansion * 512


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a torchvision ResNet, or any module containing torchvision ResNet blocks) on the fused ops.

    ``inplace=False`` converts a deep copy and leaves ``model`` as it was; ``inplace=True``
    converts ``model`` itself and returns it. A model already converted (or built by this
    package) is returned as is.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if not _torchvision_modules(model):
        if any(isinstance(m, tuple(_FUSED.values())) for m in model.modules()):
            return model
        hint = ""
        if type(model).__module__.startswith("timm."):
            hint = (" For timm's seresnet*/resnetv2_* build resnet_fast's se_resnet*/preact_resnet* and "
                    "load_state_dict(timm_model.state_dict()): the keys are the same.")
        raise TypeError(f"convert: {type(model).__name__} contains no torchvision ResNet, BasicBlock or "
                        f"Bottleneck.{hint}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in _torchvision_modules(model):
        _adopt(module)
    return model
