"""The ResNet family on the fused ops: builders, ``convert``, and a name registry.

torchvision-compatible (same state_dict keys, seeded init and outputs):
resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
wide_resnet50_2, wide_resnet101_2. timm-compatible: se_resnet18/34/50/101/152,
se_resnext50_32x4d, se_resnext101_32x4d (timm's seresnet*/seresnext*) and
preact_resnet18/34/50/101/152 (timm's resnetv2_*).
"""
from .blocks import BasicBlock, Bottleneck, PreActBasic, PreActBottleneck, SEModule
from .convert import convert
from .preact import (ResNetV2, preact_resnet18, preact_resnet34, preact_resnet50, preact_resnet101,
                     preact_resnet152)
from .registry import get_model, list_models
from .resnet import (ResNet, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)
from .senet import (se_resnet18, se_resnet34, se_resnet50, se_resnet101, se_resnet152, se_resnext50_32x4d,
                    se_resnext101_32x4d)

__all__ = [
    "ResNet", "ResNetV2", "BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "SEModule",
    "convert", "get_model", "list_models",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    "se_resnet18", "se_resnet34", "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101", "preact_resnet152",
]
