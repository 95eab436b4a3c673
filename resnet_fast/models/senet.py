"""SE-ResNet / SE-ResNeXt following timm's ``seresnet*`` / ``seresnext*``.

A :class:`~resnet_fast.models.resnet.ResNet` whose blocks carry timm's SE module after
their last BatchNorm, before the residual add (``se.fc1``, ``se.fc2``: 1x1 convs with
bias, reduction 16 rounded as timm). The state_dict keys are timm's, so
``se_resnet50().load_state_dict(timm.create_model("seresnet50").state_dict())`` works
(strict) and gives timm's outputs; the block tail runs as one ``squeeze_excite`` op.

Differences from timm are in defaults only: ``zero_init_residual`` is False as in
torchvision (timm zero-initializes the last BN by default; pass True for timm's init).
"""
from __future__ import annotations

from typing import Any

from .blocks import BasicBlock, Bottleneck, SEModule
from .registry import append_doc, register_model
from .resnet import ResNet, _resnet, _set_once

__all__ = ["se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d",
           "se_resnext101_32x4d"]


def _se_resnet(block, layers, weights: Any, progress: bool, **kwargs: Any) -> ResNet:
    kwargs.setdefault("se_layer", SEModule)
    return _resnet(block, layers, weights, progress, None, **kwargs)


_DOC = """

    ``weights``: None, a checkpoint path or a state dict (e.g. timm's ``{timm}``). ``kwargs``: of
    :class:`~resnet_fast.models.resnet.ResNet`.
"""


@register_model
@append_doc(_DOC.format(timm="seresnet18"))
def se_resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNet-18 (timm's seresnet18)."""
    return _se_resnet(BasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnet34"))
def se_resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNet-34 (timm's seresnet34)."""
    return _se_resnet(BasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnet50"))
def se_resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNet-50 (timm's seresnet50, 28,088,024 parameters)."""
    return _se_resnet(Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnet101"))
def se_resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNet-101 (timm's seresnet101)."""
    return _se_resnet(Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnet152"))
def se_resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNet-152 (timm's seresnet152)."""
    return _se_resnet(Bottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnext50_32x4d"))
def se_resnext50_32x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNeXt-50 32x4d (timm's seresnext50_32x4d)."""
    _set_once(kwargs, "groups", 32)
    _set_once(kwargs, "width_per_group", 4)
    return _se_resnet(Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


@register_model
@append_doc(_DOC.format(timm="seresnext101_32x4d"))
def se_resnext101_32x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """SE-ResNeXt-101 32x4d (timm's seresnext101_32x4d)."""
    _set_once(kwargs, "groups", 32)
    _set_once(kwargs, "width_per_group", 4)
    return _se_resnet(Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)
