"""Pre-activation ResNet v2 following timm's ``resnetv2_18/34/50/101/152``.

Layout and state_dict keys are timm's: ``stem.conv`` (7x7, no norm) and ``stem.pool``;
``stages.<i>.blocks.<j>`` pre-activation blocks (norm1, conv1, norm2, conv2[, norm3,
conv3], ``downsample.conv`` on the first block of a stage where the shape changes);
a final ``norm`` + ReLU; ``head.fc`` a 1x1 conv with bias. timm's checkpoints load
unchanged (its BatchNormAct2d norms have BatchNorm2d's keys).

On the fused ops: each block's first norm is one ``bn_relu``, every conv followed by a
norm is one ``conv_bn_relu``, and the final norm + ReLU is one ``bn_relu``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import ops
from ._checks import check_input
from ._fusion import hooked, norm_args
from .blocks import PreActBasic, PreActBottleneck, conv_out_size, create_conv2d
from .registry import append_doc, register_model
from .weights import build

Tensor = torch.Tensor

__all__ = ["ResNetV2", "preact_resnet18", "preact_resnet34", "preact_resnet50", "preact_resnet101",
           "preact_resnet152"]


class ResNetStage(nn.Module):
    """timm's resnetv2 stage: ``blocks`` in a Sequential; the first may stride and project."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, block_fn: type,
                 bottle_ratio: float, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential()
        prev_chs, proj = in_chs, True
        for block_idx in range(depth):
            self.blocks.add_module(str(block_idx), block_fn(
                prev_chs, out_chs, stride=stride if block_idx == 0 else 1, bottle_ratio=bottle_ratio,
                norm_layer=norm_layer, proj=proj))
            prev_chs, proj = out_chs, False

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """timm's ClassifierHead(use_conv=True): avg pool, 1x1 conv ``fc`` with bias, flatten."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_features, num_classes, 1, bias=True) if num_classes > 0 else nn.Identity()
        self.flatten = nn.Flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.flatten(self.fc(self.global_pool(x)))


class ResNetV2(nn.Module):
    """Pre-activation ResNet (timm's ResNetV2 with BatchNorm, ReLU, the plain 7x7 stem)."""

    def __init__(self, layers: list[int], channels: tuple[int, ...] = (256, 512, 1024, 2048),
                 num_classes: int = 1000, in_chans: int = 3, basic: bool = False, bottle_ratio: float = 0.25,
                 stem_chs: int = 64, zero_init_residual: bool = False,
                 norm_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.num_classes = num_classes
        self.stem = nn.Sequential(OrderedDict([
            ("conv", create_conv2d(in_chans, stem_chs, kernel_size=7, stride=2)),
            ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        block_fn = PreActBasic if basic else PreActBottleneck
        prev_chs = stem_chs
        self.stages = nn.Sequential()
        for stage_idx, (depth, out_chs) in enumerate(zip(layers, channels)):
            self.stages.add_module(str(stage_idx), ResNetStage(
                prev_chs, out_chs, stride=1 if stage_idx == 0 else 2, depth=depth, block_fn=block_fn,
                bottle_ratio=bottle_ratio, norm_layer=norm_layer))
            prev_chs = out_chs
        self.num_features = prev_chs
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes)
        self.init_weights(zero_init_residual)

    def init_weights(self, zero_init_last: bool = False) -> None:
        """timm's resnetv2 init, drawing random numbers in its order (seeded models equal timm's)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) or ("head.fc" in name and isinstance(module, nn.Conv2d)):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if hasattr(module, "zero_init_last"):
                    module.zero_init_last()

    def _norm_sizes(self, h: int, w: int) -> list:
        sizes = []
        for module in self.stem:
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                h, w = conv_out_size(module, h, w)
        for stage in self.stages:
            for block in stage.blocks:
                if hasattr(block, "norm_sizes"):
                    block_sizes, h, w = block.norm_sizes(h, w)
                    sizes += block_sizes
        return sizes + [(self.norm, self.num_features, h, w)]

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after the final norm + ReLU (as timm's forward_features)."""
        check_input(self, x, self.stem.conv.in_channels, self._norm_sizes)
        x = self.stages(self.stem(x))
        norm = norm_args(self.norm)
        if norm is None or hooked(self.norm):
            return torch.relu(self.norm(x))
        return ops.bn_relu(x, *norm.tensors, **norm.kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _preact(layers: list[int], weights: Any, progress: bool, basic: bool, **kwargs: Any) -> ResNetV2:
    model_args = dict(channels=(64, 128, 256, 512), bottle_ratio=1.0) if basic else {}

    def factory(**model_kwargs):
        return ResNetV2(layers, basic=basic, **model_args, **model_kwargs)

    return build(factory, weights, progress, kwargs, head="head.fc.")


_DOC = """

    ``weights``: None, a checkpoint path or a state dict (e.g. timm's ``{timm}``). ``kwargs``:
    ``num_classes`` (0: pooled features), ``in_chans``, ``zero_init_residual`` (timm's
    zero_init_last: zero each block's last conv), ``norm_layer``.
"""


@register_model
@append_doc(_DOC.format(timm="resnetv2_18"))
def preact_resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-18 (timm's resnetv2_18: basic pre-activation blocks)."""
    return _preact([2, 2, 2, 2], weights, progress, basic=True, **kwargs)


@register_model
@append_doc(_DOC.format(timm="resnetv2_34"))
def preact_resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-34 (timm's resnetv2_34: basic pre-activation blocks)."""
    return _preact([3, 4, 6, 3], weights, progress, basic=True, **kwargs)


@register_model
@append_doc(_DOC.format(timm="resnetv2_50"))
def preact_resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-50 (timm's resnetv2_50)."""
    return _preact([3, 4, 6, 3], weights, progress, basic=False, **kwargs)


@register_model
@append_doc(_DOC.format(timm="resnetv2_101"))
def preact_resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-101 (timm's resnetv2_101)."""
    return _preact([3, 4, 23, 3], weights, progress, basic=False, **kwargs)


@register_model
@append_doc(_DOC.format(timm="resnetv2_152"))
def preact_resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNetV2:
    """Pre-activation ResNet-152 (timm's resnetv2_152)."""
    return _preact([3, 8, 36, 3], weights, progress, basic=False, **kwargs)
