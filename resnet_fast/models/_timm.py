"""timm's ResNet family onto the fused blocks, for :func:`~resnet_fast.models.convert.convert`.

timm's blocks hold the same modules as this package's (conv1, bn1, ..., se, downsample;
norm1, conv1, ... for resnetv2), under a few other names, plus modules the fused ops
have no counterpart for. A block whose extra modules all compute nothing (anti-aliasing
and drop-block as ``nn.Identity``, no drop-path, ReLU activations, no attention or
timm's plain SE) gets one of the classes below, subclasses of the fused blocks that
read timm's names, so the fused forward is the one in ``blocks.py``; any other block
stays timm's and :func:`plan` says why.

What changes inside a converted block, and why:

* ``timm.models.resnet`` blocks: nothing. ``relu`` (the fused blocks' one activation) is a
  property over timm's ``act1``/``act2``/``act3``, and the eager fallback is timm's forward.
* timm's ``SEModule`` (``seresnet*``, ``seresnext*``) becomes this package's
  :class:`~resnet_fast.models.blocks.SEModule` (same fc1/fc2, same function); its empty
  ``bn`` (``nn.Identity``) is dropped and timm's ``Sigmoid`` gate becomes ``nn.Sigmoid``.
* ``timm.models.resnetv2`` pre-activation blocks: the norms are timm's ``BatchNormAct2d``
  (BN with its ReLU inside); they become ``nn.BatchNorm2d`` and the block applies the ReLU,
  as :class:`~resnet_fast.models.blocks.PreActBottleneck` does. ``block.norm1(x)`` called on
  its own therefore no longer applies the ReLU.

None of these modules holds a parameter or buffer, so parameters, buffers and state_dict
keys are unchanged.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ._fusion import fusable_conv, norm_args
from .blocks import BasicBlock, Bottleneck, PreActBasic, PreActBottleneck, SEModule

_RESNET = "timm.models.resnet"
_RESNETV2 = "timm.models.resnetv2"


def _all_relu(*acts: nn.Module) -> bool:
    return all(type(a) is nn.ReLU for a in acts)


class TimmBasicBlock(BasicBlock):
    """timm's resnet ``BasicBlock`` on the fused ops (conv1, bn1, act1, conv2, bn2, se, act2)."""

    @property
    def relu(self) -> Optional[nn.Module]:
        # The fused path applies one ReLU after bn1 and after the add: exact only if both are ReLU.
        return self.act2 if _all_relu(self.act1, self.act2) else None

    def forward_eager(self, x):
        """timm's BasicBlock.forward."""
        from timm.models.resnet import BasicBlock as Timm
        return Timm.forward(self, x)


class TimmBottleneck(Bottleneck):
    """timm's resnet ``Bottleneck`` on the fused ops (conv1..3, bn1..3, act1..3, se)."""

    @property
    def relu(self) -> Optional[nn.Module]:
        return self.act3 if _all_relu(self.act1, self.act2, self.act3) else None

    def forward_eager(self, x):
        """timm's Bottleneck.forward."""
        from timm.models.resnet import Bottleneck as Timm
        return Timm.forward(self, x)


class TimmPreActBasic(PreActBasic):
    """timm's resnetv2 ``PreActBasic`` on the fused ops (norm1, conv1, norm2, conv2, downsample.conv)."""


class TimmPreActBottleneck(PreActBottleneck):
    """timm's resnetv2 ``PreActBottleneck`` on the fused ops (norm1..3, conv1..3, downsample.conv)."""


# timm class name -> (the module it lives in, the fused class it becomes)
_CLASSES = {
    (_RESNET, "BasicBlock"): TimmBasicBlock,
    (_RESNET, "Bottleneck"): TimmBottleneck,
    (_RESNETV2, "PreActBasic"): TimmPreActBasic,
    (_RESNETV2, "PreActBottleneck"): TimmPreActBottleneck,
}


def is_timm_block(module: nn.Module) -> bool:
    """A block of timm's ResNet family (resnet or resnetv2), convertible or not."""
    return type(module).__module__ in (_RESNET, _RESNETV2) and type(module).__name__ in (
        "BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck")


def _active_drop(module: Optional[nn.Module]) -> bool:
    # DropPath / DropBlock2d with a rate of zero compute the identity, as do None and Identity.
    return not (module is None or type(module) is nn.Identity or getattr(module, "drop_prob", None) == 0)


def _is_timm_se(se: nn.Module) -> bool:
    """timm's SEModule in its default form: mean pool, fc1, ReLU, fc2, sigmoid gate."""
    if type(se).__name__ != "SEModule" or not type(se).__module__.startswith("timm."):
        return False
    gate_ok = type(se.gate) is nn.Sigmoid or (
        type(se.gate).__name__ == "Sigmoid" and type(se.gate).__module__.startswith("timm."))
    return (not se.add_maxpool and type(se.bn) is nn.Identity and type(se.act) is nn.ReLU and gate_ok
            and all(type(fc) is nn.Conv2d and fc.kernel_size == (1, 1) and fc.bias is not None
                    for fc in (se.fc1, se.fc2)))


def _is_bn_relu(norm: nn.Module) -> bool:
    """timm's BatchNormAct2d as BatchNorm + ReLU (no dropout, no other activation)."""
    return (type(norm).__name__ == "BatchNormAct2d" and type(norm).__module__.startswith("timm.")
            and type(norm.act) is nn.ReLU and type(norm.drop) is nn.Identity
            and set(norm._modules) == {"act", "drop"})


def _resnet_reasons(block: nn.Module) -> list[str]:
    reasons = []
    if getattr(block, "aa", None) is not None and type(block.aa) is not nn.Identity:
        reasons.append("anti-aliased downsampling")
    if _active_drop(getattr(block, "drop_block", None)):
        reasons.append("drop-block")
    if _active_drop(getattr(block, "drop_path", None)):
        reasons.append("drop-path")
    acts = [getattr(block, f"act{i}") for i in (1, 2, 3) if hasattr(block, f"act{i}")]
    if not _all_relu(*acts):
        reasons.append("activation " + "/".join(sorted({type(a).__name__ for a in acts if type(a) is not nn.ReLU})))
    if block.se is not None and type(block.se) is not SEModule and not _is_timm_se(block.se):
        reasons.append(f"attention {type(block.se).__name__}")
    norms = [m for name, m in block.named_children() if name.startswith("bn")]
    if any(norm_args(n) is None for n in norms):
        reasons.append("norm " + "/".join(sorted({type(n).__name__ for n in norms if norm_args(n) is None})))
    # The fused ops take the convolutions that precede a fused BN (the last one may be any module).
    convs = [block.conv1, block.conv2] if hasattr(block, "conv3") else [block.conv1]
    if not all(fusable_conv(c) for c in convs):
        reasons.append("convolution " + "/".join(sorted({type(c).__name__ for c in convs if not fusable_conv(c)})))
    return reasons


def _resnetv2_reasons(block: nn.Module) -> list[str]:
    reasons = []
    if _active_drop(getattr(block, "drop_path", None)):
        reasons.append("drop-path")
    norms = [m for name, m in block.named_children() if name.startswith("norm")]
    if not all(_is_bn_relu(n) for n in norms):
        reasons.append("norm " + "/".join(sorted({type(n).__name__ for n in norms if not _is_bn_relu(n)})))
    convs = [m for name, m in block.named_children() if name.startswith("conv")]
    if not all(fusable_conv(c) for c in convs[:-1]):
        reasons.append("convolution " + "/".join(sorted({type(c).__name__ for c in convs if not fusable_conv(c)})))
    ds = block.downsample
    if ds is not None and not (type(ds).__name__ == "DownsampleConv" and type(ds.norm) is nn.Identity):
        reasons.append("downsample with a norm (non-pre-activation)")
    return reasons


def plan(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, list[str]]]:
    """The timm blocks of ``model`` to convert, and {block name: reasons} for those that stay timm's."""
    convertible, kept = [], {}
    for name, module in model.named_modules():
        if not is_timm_block(module):
            continue
        key = (type(module).__module__, type(module).__name__)
        if key not in _CLASSES:
            kept[name] = [f"{key[1]} of {key[0]} (not pre-activation)"]
            continue
        reasons = _resnet_reasons(module) if key[0] == _RESNET else _resnetv2_reasons(module)
        if reasons:
            kept[name] = reasons
        else:
            convertible.append((name, module))
    return convertible, kept


def _adopt_se(se: nn.Module) -> None:
    """timm's default SEModule -> this package's SEModule (what the fused squeeze_excite op reads)."""
    se.__class__ = SEModule
    if type(se.gate) is not nn.Sigmoid:
        se.gate = nn.Sigmoid()
    del se.bn  # nn.Identity: no parameters or buffers
    del se.add_maxpool


def _adopt_bn_relu(norm: nn.Module) -> None:
    """timm's BatchNormAct2d (BN + ReLU) -> nn.BatchNorm2d; the pre-activation block applies the ReLU."""
    norm.__class__ = nn.BatchNorm2d
    del norm.act, norm.drop  # ReLU and Identity: no parameters or buffers


def adopt(block: nn.Module) -> None:
    """Turn one block that :func:`plan` found convertible into its fused class, in place."""
    fused = _CLASSES[(type(block).__module__, type(block).__name__)]
    if isinstance(getattr(block, "se", None), nn.Module) and type(block.se) is not SEModule:
        _adopt_se(block.se)
    if fused in (TimmPreActBasic, TimmPreActBottleneck):
        for name, norm in block.named_children():
            if name.startswith("norm"):
                _adopt_bn_relu(norm)
    block.__class__ = fused
