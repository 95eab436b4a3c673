"""``convert(model)``: an existing torchvision or timm ResNet onto the fused ops, weights and all.

torchvision's ResNet / BasicBlock / Bottleneck instances get this package's classes,
which have the same attributes and constructor, so nothing else changes: the same
parameter and buffer objects (an optimizer built before keeps working), state_dict keys,
device, dtype, memory format, train/eval flags, requires_grad, hooks and frozen or
synchronized BatchNorms. Only ``forward`` differs, and it computes the same function.

timm's ResNet family (``timm.models.resnet.ResNet``: resnet*, resnet*d, seresnet*,
seresnext*...; ``timm.models.resnetv2.ResNetV2`` pre-activation models) is converted
block by block (``_timm``): each block the fused ops compute exactly gets a fused class,
with the same guarantees; the stem, the head and any other block stay timm's code.

Works on a whole model or on any module that contains such blocks (e.g. a detection
backbone, whose FrozenBatchNorm2d layers the fused ops run as eval-mode BN).
"""
from __future__ import annotations

import copy
import warnings

from torch import nn

from . import _timm
from .blocks import BasicBlock, Bottleneck, PreActBasic, PreActBottleneck
from .resnet import ResNet

_TORCHVISION_MODULE = "torchvision.models.resnet"
_FUSED = {"ResNet": ResNet, "BasicBlock": BasicBlock, "Bottleneck": Bottleneck}
_FUSED_BLOCKS = (ResNet, BasicBlock, Bottleneck, PreActBasic, PreActBottleneck)


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


def _kept_message(kept: dict[str, list[str]], total: int) -> str:
    by_reason: dict[str, list[str]] = {}
    for name, reasons in kept.items():
        by_reason.setdefault(", ".join(reasons), []).append(name or "(the model)")
    listed = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in by_reason.items())
    return (f"convert: {len(kept)} of {total} timm blocks stay on timm's code (the fused ops cannot compute "
            f"them): {listed}")


def convert(model: nn.Module, inplace: bool = False, strict: bool = False) -> nn.Module:
    """``model`` (a torchvision or timm ResNet, or any module containing their blocks) on the fused ops.

    ``inplace=False`` converts a deep copy and leaves ``model`` as it was; ``inplace=True``
    converts ``model`` itself and returns it. A model already converted (or built by this
    package) is returned as is.

    timm blocks the fused ops cannot compute (anti-aliased downsampling, drop-path or
    drop-block with a non-zero rate, attention other than timm's default SE, activations
    other than ReLU, norms other than BatchNorm) stay timm's, named in one warning;
    ``strict=True`` raises a ValueError instead, before anything is changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    timm_blocks, kept = _timm.plan(model)
    if kept:
        message = _kept_message(kept, len(kept) + len(timm_blocks))
        if strict:
            raise ValueError(message + " (strict=True)")
        warnings.warn(message, stacklevel=2)
    if not _torchvision_modules(model) and not timm_blocks:
        if kept or any(isinstance(m, _FUSED_BLOCKS) for m in model.modules()):
            return model
        raise TypeError(f"convert: {type(model).__name__} contains no torchvision ResNet, BasicBlock or "
                        "Bottleneck and no timm ResNet / ResNetV2 block.")
    if not inplace:
        model = copy.deepcopy(model)
        timm_blocks, _ = _timm.plan(model)
    for module in _torchvision_modules(model):
        _adopt(module)
    for _, block in timm_blocks:
        _timm.adopt(block)
    return model
