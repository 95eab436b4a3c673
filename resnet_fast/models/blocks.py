"""Residual blocks on the fused ops, with torchvision's / timm's attribute names.

* :class:`BasicBlock`, :class:`Bottleneck`: torchvision's blocks (conv1, bn1, conv2, bn2,
  conv3, bn3, relu, downsample = Sequential(conv, bn)); ``se_layer`` adds timm's SE module
  (``se.fc1``, ``se.fc2``) after the last BN, before the residual add (SE-ResNet/ResNeXt).
* :class:`PreActBasic`, :class:`PreActBottleneck`: timm's ``resnetv2`` pre-activation
  blocks (norm1, conv1, norm2, conv2[, norm3, conv3], downsample.conv).

The BatchNorm modules are parameter holders: forward hands their tensors to the fused
ops (``resnet_fast.ops``), which update the running statistics in place exactly as
``nn.BatchNorm2d`` would. A block whose modules the ops cannot express (see
``_fusion``) runs its eager forward, the same code as torchvision's / timm's.

Each block also describes the spatial size at each of its BatchNorms
(``norm_sizes``), which the models use to refuse an input before any statistic changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._conv_fusion import fused_block_forward
from ._fusion import (DownsamplePlan, bn_relu_conv, conv_add, conv_bn, conv_residual_tail, downsample_parts,
                      downsample_plan, fusable_conv, hooked, identity_branch, norm_kind, pack_norm, plan_of,
                      recompute_conv_inputs, residual_tail, submodules)

Tensor = torch.Tensor


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding (timm.layers.make_divisible)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def conv_out_size(conv: nn.Module, h: int, w: int) -> tuple[int, int]:
    """Output spatial size of an nn.Conv2d / nn.MaxPool2d-like module on an h x w input."""
    size = []
    for i, n in enumerate((h, w)):
        k, s, d = (_at(conv.kernel_size, i), _at(conv.stride, i), _at(getattr(conv, "dilation", 1), i))
        if isinstance(conv.padding, str):  # Conv2d "same" (stride 1) / "valid"
            size.append(n if conv.padding == "same" else (n - d * (k - 1) - 1) // s + 1)
            continue
        p = _at(conv.padding, i)
        numerator = n + 2 * p - d * (k - 1) - 1
        if getattr(conv, "ceil_mode", False):
            out = -(-numerator // s) + 1
            size.append(out - 1 if (out - 1) * s >= n + p else out)
        else:
            size.append(numerator // s + 1)
    return size[0], size[1]


def _at(v, i):
    return v[i] if isinstance(v, (tuple, list)) else v


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SEModule(nn.Module):
    """timm's SEModule: x * sigmoid(fc2(relu(fc1(mean_hw(x))))), fc1/fc2 1x1 convs with bias.

    ``rd_channels`` defaults to timm's rounding of channels / 16 (a multiple of 8, at least 8).
    """

    def __init__(self, channels: int, rd_ratio: float = 1. / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 8, bias: bool = True) -> None:
        super().__init__()
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(x_se))))


def se_weights(se: Optional[nn.Module]):
    """(fc1.weight, fc1.bias, fc2.weight, fc2.bias) for the squeeze_excite op; () without SE; None if not fusable."""
    if se is None:
        return ()
    if (type(se) is SEModule and type(se.act) is nn.ReLU and type(se.gate) is nn.Sigmoid
            and all(type(fc) is nn.Conv2d and fc.kernel_size == (1, 1) for fc in (se.fc1, se.fc2))):
        return se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias
    return None


@dataclass(frozen=True)
class _BlockPlan:
    """What a residual block decided it can fuse (``_fusion.plan_of``): decisions, no tensors."""
    modules: tuple  # every submodule: a hook on any of them sends the forward to the eager path
    norm_kinds: tuple  # _fusion.norm_kind of each norm, in the block's order
    last_conv_fusable: bool  # the last convolution can take its BN (and the tail) as an op
    downsample: Optional[DownsamplePlan]


class _ResidualBlock(nn.Module):
    """What BasicBlock and Bottleneck share: the fused/eager dispatch and the block tail."""

    def _plan(self, convs_fused: tuple, last_conv: nn.Conv2d, norms: tuple) -> Optional[_BlockPlan]:
        """The block's plan, or None when the whole block runs eagerly (made once per module state)."""
        def make() -> Optional[_BlockPlan]:
            kinds = tuple(norm_kind(n) for n in norms)
            # The ops apply ReLU: a block whose activation was swapped (e.g. for SiLU) runs eagerly.
            if (se_weights(self.se) is None or type(self.relu) is not nn.ReLU or None in kinds
                    or not all(fusable_conv(c) for c in convs_fused)):
                return None
            return _BlockPlan(submodules(self), kinds, fusable_conv(last_conv), downsample_plan(self.downsample))

        return plan_of(self, convs_fused + (last_conv,), make)

    def _fused_norms(self, convs_fused: tuple, last_conv: nn.Conv2d, norms: tuple):
        """(plan, NormArgs of ``norms``, SE weights) when the whole block can run fused, else None."""
        plan = self._plan(convs_fused, last_conv, norms)
        if plan is None or hooked(*plan.modules):
            return None
        args = [pack_norm(n, kind) for n, kind in zip(norms, plan.norm_kinds)]
        se = () if self.se is None else (self.se.fc1.weight, self.se.fc1.bias, self.se.fc2.weight, self.se.fc2.bias)
        return plan, args, se

    def _eager_tail(self, out: Tensor, x: Tensor) -> Tensor:
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)

    def _downsample_sizes(self, h: int, w: int) -> list:
        parts = downsample_parts(self.downsample)
        if parts is None:
            return []
        conv, _ = parts
        return [(self.downsample[1], conv.out_channels) + conv_out_size(conv, h, w)]

    def zero_init_last(self) -> None:
        """Zero the last BN's weight (zero_init_residual): the block starts as the identity."""
        bn = self.last_norm()
        if getattr(bn, "weight", None) is not None:
            nn.init.zeros_(bn.weight)


class BasicBlock(_ResidualBlock):
    """torchvision's BasicBlock (3x3, 3x3); with ``se_layer``, timm's SE-ResNet basic block."""
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 se_layer: Optional[Callable[[int], nn.Module]] = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.se = se_layer(planes) if se_layer is not None else None
        self.downsample = downsample
        self.stride = stride

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        fused = self._fused_norms((self.conv1,), self.conv2, (self.bn1, self.bn2))
        if fused is None:
            return self.forward_eager(x)
        plan, (bn1, bn2), se = fused
        out = fused_block_forward(self, x, ("conv1", "conv2"), (bn1,), bn2, se, plan.downsample)  # Triton chain
        if out is not None:
            return out
        if recompute_conv_inputs() and plan.last_conv_fusable:
            return residual_tail(bn_relu_conv(self.conv1(x), bn1, self.conv2), bn2, x, self.downsample, se,
                                 plan.downsample)
        out = conv_bn(x, self.conv1, bn1)
        return conv_residual_tail(out, self.conv2, bn2, x, self.downsample, se, plan.downsample,
                                  plan.last_conv_fusable)

    def forward_eager(self, x: Tensor) -> Tensor:
        """torchvision's BasicBlock.forward (timm's with SE): module by module."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._eager_tail(out, x)

    def norm_sizes(self, h: int, w: int) -> tuple[list, int, int]:
        h1, w1 = conv_out_size(self.conv1, h, w)
        h2, w2 = conv_out_size(self.conv2, h1, w1)
        sizes = [(self.bn1, self.conv1.out_channels, h1, w1), (self.bn2, self.conv2.out_channels, h2, w2)]
        return sizes + self._downsample_sizes(h, w), h2, w2


class Bottleneck(_ResidualBlock):
    """torchvision's Bottleneck (1x1, 3x3 with the stride, 1x1: ResNet v1.5); ``se_layer`` as timm's.

    ``low_memory`` (set by :meth:`ResNet.set_low_memory`): in training, the last convolution
    and the downsample convolution are recomputed in backward instead of their 4x-wide outputs
    being kept (blocks without SE; the SE tail needs its input).
    """
    expansion: int = 4
    low_memory: bool = False

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 se_layer: Optional[Callable[[int], nn.Module]] = None) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.se = se_layer(planes * self.expansion) if se_layer is not None else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        fused = self._fused_norms((self.conv1, self.conv2), self.conv3, (self.bn1, self.bn2, self.bn3))
        if fused is None:
            return self.forward_eager(x)
        plan, (bn1, bn2, bn3), se = fused
        out = fused_block_forward(self, x, ("conv1", "conv2", "conv3"), (bn1, bn2), bn3, se,
                                  plan.downsample)  # the Triton conv chain, if chosen
        if out is not None:
            return out
        if recompute_conv_inputs() and plan.last_conv_fusable:
            # Autograd keeps x and the three raw convolution outputs; relu(bn(.)) is recomputed.
            out = bn_relu_conv(self.conv1(x), bn1, self.conv2)
            if self.low_memory and not se:
                # Keeps relu(bn2(.)) (width w) and the block output (the next block's input, kept
                # anyway) instead of conv3's output (4w): conv3 reruns in backward.
                out = ops.bn_relu(out, *bn2.tensors, **bn2.kwargs)
                identity = identity_branch(x, self.downsample, recompute=True, plan=plan.downsample)
                return conv_bn(out, self.conv3, bn3, residual=identity, recompute=True)
            out = bn_relu_conv(out, bn2, self.conv3)
            return residual_tail(out, bn3, x, self.downsample, se, plan.downsample)
        out = conv_bn(x, self.conv1, bn1)
        out = conv_bn(out, self.conv2, bn2)
        return conv_residual_tail(out, self.conv3, bn3, x, self.downsample, se, plan.downsample,
                                  plan.last_conv_fusable)

    def forward_eager(self, x: Tensor) -> Tensor:
        """torchvision's Bottleneck.forward (timm's with SE): module by module."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._eager_tail(out, x)

    def norm_sizes(self, h: int, w: int) -> tuple[list, int, int]:
        sizes, h_in, w_in = [], h, w
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            h, w = conv_out_size(conv, h, w)
            sizes.append((bn, conv.out_channels, h, w))
        return sizes + self._downsample_sizes(h_in, w_in), h, w


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """timm's symmetric padding (timm.layers.get_padding)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def create_conv2d(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                  groups: int = 1) -> nn.Conv2d:
    """timm's create_conv2d for the defaults resnetv2 uses: bias-free, symmetric padding."""
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=get_padding(kernel_size, stride, dilation),
                     dilation=dilation, groups=groups, bias=False)


class DownsampleConv(nn.Module):
    """timm's resnetv2 projection shortcut: a strided 1x1 conv of the pre-activated input (no norm)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = create_conv2d(in_chs, out_chs, 1, stride=stride)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class _PreActBlock(nn.Module):
    """timm's pre-activation blocks: x + convs(bn-relu ...), on the fused ops.

    out = conv_last(relu(norm_k(... conv1(relu(norm1(x)))))) + shortcut, shortcut = x or
    downsample(relu(norm1(x))). Under autograd each norm fuses with the conv after it
    (``bn_relu_conv``: only raw tensors are kept for backward); without, norm1 runs as
    ``bn_relu`` on the block input and each later norm fuses with the conv before it
    (``conv_bn_relu``, BN folded in eval), and the add is the last convolution's epilogue
    where oneDNN runs it (``conv_add``).
    """

    def _convs_norms(self) -> tuple[list, list]:
        raise NotImplementedError

    def _plan(self, convs: list, norms: list) -> Optional[tuple]:
        """(submodules, norm kinds, last conv fusable), or None when the block runs eagerly (made once
        per module state: _fusion.plan_of)."""
        def make() -> Optional[tuple]:
            kinds = tuple(norm_kind(n) for n in norms)
            if None in kinds or not all(fusable_conv(c) for c in convs[:-1]):
                return None
            return submodules(self), kinds, fusable_conv(convs[-1])

        return plan_of(self, tuple(convs), make)

    def forward(self, x: Tensor) -> Tensor:
        convs, norms = self._convs_norms()
        plan = self._plan(convs, norms)
        if plan is None or hooked(*plan[0]):
            return self.forward_eager(x)
        _, kinds, last_conv_fusable = plan
        args = [pack_norm(n, kind) for n, kind in zip(norms, kinds)]
        if recompute_conv_inputs() and last_conv_fusable:
            # Autograd keeps x and the raw convolution outputs; every relu(norm(.)) is recomputed,
            # except the pre-activated input a projection shortcut consumes.
            if self.downsample is None:
                out, shortcut = bn_relu_conv(x, args[0], convs[0]), x
            else:
                x_preact = ops.bn_relu(x, *args[0].tensors, **args[0].kwargs)
                out, shortcut = convs[0](x_preact), self.downsample(x_preact)
            for conv, bn in zip(convs[1:], args[1:]):
                out = bn_relu_conv(out, bn, conv)
            return out + shortcut
        x_preact = ops.bn_relu(x, *args[0].tensors, **args[0].kwargs)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        out = x_preact
        for conv, bn in zip(convs[:-1], args[1:]):
            out = conv_bn(out, conv, bn)
        return conv_add(out, convs[-1], shortcut)

    def forward_eager(self, x: Tensor) -> Tensor:
        """timm's PreActBasic / PreActBottleneck forward, module by module."""
        convs, norms = self._convs_norms()
        x_preact = F.relu(norms[0](x))
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        out = convs[0](x_preact)
        for norm, conv in zip(norms[1:], convs[1:]):
            out = conv(F.relu(norm(out)))
        return out + shortcut

    def norm_sizes(self, h: int, w: int) -> tuple[list, int, int]:
        convs, norms = self._convs_norms()
        sizes = [(norms[0], convs[0].in_channels, h, w)]
        for conv, norm in zip(convs, norms[1:] + [None]):
            h, w = conv_out_size(conv, h, w)
            if norm is not None:
                sizes.append((norm, conv.out_channels, h, w))
        return sizes, h, w

    def zero_init_last(self) -> None:
        """timm's zero_init_last for pre-activation blocks: zero the last conv's weight."""
        nn.init.zeros_(self._convs_norms()[0][-1].weight)


def _projection(proj: bool, in_chs: int, out_chs: int, stride: int) -> Optional[nn.Module]:
    return DownsampleConv(in_chs, out_chs, stride) if proj else None


class PreActBasic(_PreActBlock):
    """timm's PreActBasic: norm1, conv1 (3x3, stride), norm2, conv2 (3x3)."""

    def __init__(self, in_chs: int, out_chs: Optional[int] = None, bottle_ratio: float = 1.0, stride: int = 1,
                 dilation: int = 1, first_dilation: Optional[int] = None, groups: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, proj: bool = False) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        norm_layer = norm_layer or nn.BatchNorm2d
        out_chs = out_chs or in_chs
        mid_chs = make_divisible(out_chs * bottle_ratio)
        # As timm: a projection only where the shape changes (module creation order kept for seeded init).
        needs_proj = stride != 1 or first_dilation != dilation or in_chs != out_chs
        self.downsample = _projection(proj and needs_proj, in_chs, out_chs, stride)
        self.norm1 = norm_layer(in_chs)
        self.conv1 = create_conv2d(in_chs, mid_chs, 3, stride=stride, dilation=first_dilation, groups=groups)
        self.norm2 = norm_layer(mid_chs)
        self.conv2 = create_conv2d(mid_chs, out_chs, 3, dilation=dilation, groups=groups)

    def _convs_norms(self) -> tuple[list, list]:
        return [self.conv1, self.conv2], [self.norm1, self.norm2]


class PreActBottleneck(_PreActBlock):
    """timm's PreActBottleneck: norm1, conv1 (1x1), norm2, conv2 (3x3, stride), norm3, conv3 (1x1)."""

    def __init__(self, in_chs: int, out_chs: Optional[int] = None, bottle_ratio: float = 0.25, stride: int = 1,
                 dilation: int = 1, first_dilation: Optional[int] = None, groups: int = 1,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, proj: bool = False) -> None:
        super().__init__()
        first_dilation = first_dilation or dilation
        norm_layer = norm_layer or nn.BatchNorm2d
        out_chs = out_chs or in_chs
        mid_chs = make_divisible(out_chs * bottle_ratio)
        self.downsample = _projection(proj, in_chs, out_chs, stride)
        self.norm1 = norm_layer(in_chs)
        self.conv1 = create_conv2d(in_chs, mid_chs, 1)
        self.norm2 = norm_layer(mid_chs)
        self.conv2 = create_conv2d(mid_chs, mid_chs, 3, stride=stride, dilation=first_dilation, groups=groups)
        self.norm3 = norm_layer(mid_chs)
        self.conv3 = create_conv2d(mid_chs, out_chs, 1)

    def _convs_norms(self) -> tuple[list, list]:
        return [self.conv1, self.conv2, self.conv3], [self.norm1, self.norm2, self.norm3]
