"""ResNet / ResNeXt / Wide ResNet (and SE variants) on the fused ops, state_dict-compatible with torchvision.

``ResNet`` is torchvision's class (same constructor, module creation order and init, so
``torch.manual_seed`` gives the same weights) with these additions: ``num_classes=0``
gives pooled features (as timm), ``forward_features`` returns the last feature map,
``se_layer`` adds Squeeze-Excitation to every block (timm's SE-ResNet), ``in_chans``,
``low_memory`` (:meth:`ResNet.set_low_memory`).
Its stem runs as one ``conv_bn_relu``, each block through its fused ops (``blocks``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ._checks import check_input
from ._fusion import conv_bn, fusable_conv, hooked, norm_args
from .blocks import BasicBlock, Bottleneck, conv1x1, conv_out_size
from .registry import append_doc, register_model
from .weights import build

Tensor = torch.Tensor

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


class ResNet(nn.Module):
    low_memory: bool = False  # set_low_memory(); a class default for models made by convert()

    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[list[bool]] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 se_layer: Optional[Callable[[int], nn.Module]] = None, in_chans: int = 3,
                 low_memory: bool = False) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self._se_layer = se_layer

        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None "
                             f"or a 3-element tuple, got {replace_stride_with_dilation}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        # torchvision's init, in its order (seeded models equal torchvision's).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:  # (affine=False too)
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()
        self.set_low_memory(low_memory)

    def set_low_memory(self, enabled: bool = True) -> "ResNet":
        """Trade compute for activation memory in training: the stem convolution and each
        bottleneck's last and downsample convolutions run again in backward instead of their
        outputs being kept for it. Gradients are the same; resnet50 keeps 0.55x torchvision's
        saved-for-backward bytes instead of 0.84x, for one more 1x1 convolution per block in
        backward (on 2 CPU cores 2-17 % more time per step in the current CPU benchmarks;
        README, Performance). BasicBlock and SE blocks are unchanged. Returns the model."""
        self.low_memory = enabled
        for m in self.modules():
            if isinstance(m, Bottleneck):
                m.low_memory = enabled
        return self

    def _make_layer(self, block: type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        extra = {} if self._se_layer is None else {"se_layer": self._se_layer}
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer, **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer, **extra))
        return nn.Sequential(*layers)

    def _norm_sizes(self, h: int, w: int) -> list:
        h, w = conv_out_size(self.conv1, h, w)
        sizes = [(self.bn1, self.conv1.out_channels, h, w)]
        if isinstance(self.maxpool, nn.MaxPool2d):
            h, w = conv_out_size(self.maxpool, h, w)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                if hasattr(block, "norm_sizes"):
                    block_sizes, h, w = block.norm_sizes(h, w)
                    sizes += block_sizes
        return sizes

    def _stem(self, x: Tensor) -> Tensor:
        bn = norm_args(self.bn1)
        if (bn is not None and fusable_conv(self.conv1) and type(self.relu) is nn.ReLU
                and not hooked(self.conv1, self.bn1, self.relu)):
            x = conv_bn(x, self.conv1, bn, recompute=self.low_memory)  # maxpool keeps x anyway
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map (N, num_features, H/32, W/32), for backbone use."""
        check_input(self, x, self.conv1.in_channels, self._norm_sizes)
        x = self._stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def _resnet(block: type[Union[BasicBlock, Bottleneck]], layers: list[int], weights: Any, progress: bool,
            torchvision_weights: Optional[str], **kwargs: Any) -> ResNet:
    def factory(**model_kwargs):
        return ResNet(block, layers, **model_kwargs)

    return build(factory, weights, progress, kwargs, head="fc.", torchvision_weights=torchvision_weights)


def _set_once(kwargs: dict, name: str, value: Any) -> None:
    """torchvision's _ovewrite_named_param: the builder fixes ``name``; a different value is an error."""
    if name in kwargs and kwargs[name] != value:
        raise ValueError(f"The parameter '{name}' expected value {value} but got {kwargs[name]} instead.")
    kwargs[name] = value


_DOC = """

    ``weights``: None, a checkpoint path, a state dict, or a torchvision ``{enum}`` member / name
    (downloaded by torchvision). ``progress``: show the download progress bar. ``kwargs``: of
    :class:`ResNet` (``num_classes``, ``zero_init_residual``, ``groups``, ``width_per_group``,
    ``replace_stride_with_dilation``, ``norm_layer``, ``low_memory``).
"""


@register_model
@append_doc(_DOC.format(enum="ResNet18_Weights"))
def resnet18(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-18 (torchvision's)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, progress, "ResNet18_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNet34_Weights"))
def resnet34(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-34 (torchvision's)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, progress, "ResNet34_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNet50_Weights"))
def resnet50(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-50 (torchvision's v1.5: stride on the 3x3 conv)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, "ResNet50_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNet101_Weights"))
def resnet101(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-101 (torchvision's)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, "ResNet101_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNet152_Weights"))
def resnet152(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-152 (torchvision's)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], weights, progress, "ResNet152_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNeXt50_32X4D_Weights"))
def resnext50_32x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (torchvision's)."""
    _set_once(kwargs, "groups", 32)
    _set_once(kwargs, "width_per_group", 4)
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, "ResNeXt50_32X4D_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNeXt101_32X8D_Weights"))
def resnext101_32x8d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d (torchvision's)."""
    _set_once(kwargs, "groups", 32)
    _set_once(kwargs, "width_per_group", 8)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, "ResNeXt101_32X8D_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="ResNeXt101_64X4D_Weights"))
def resnext101_64x4d(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d (torchvision's)."""
    _set_once(kwargs, "groups", 64)
    _set_once(kwargs, "width_per_group", 4)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, "ResNeXt101_64X4D_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="Wide_ResNet50_2_Weights"))
def wide_resnet50_2(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (torchvision's: bottleneck width doubled)."""
    _set_once(kwargs, "width_per_group", 64 * 2)
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, progress, "Wide_ResNet50_2_Weights", **kwargs)


@register_model
@append_doc(_DOC.format(enum="Wide_ResNet101_2_Weights"))
def wide_resnet101_2(*, weights: Any = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 (torchvision's: bottleneck width doubled)."""
    _set_once(kwargs, "width_per_group", 64 * 2)
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, progress, "Wide_ResNet101_2_Weights", **kwargs)
