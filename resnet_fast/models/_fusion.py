"""What the fused blocks read off their modules: BatchNorm arguments, fusable convs, SE weights.

The fused path bypasses the BatchNorm (and ReLU, SE) modules' forward and hands their
tensors to the ops, so every block first asks here whether that is exact for its
modules. Anything the ops cannot express makes the block run its eager forward instead:

* a norm that is not ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` / torchvision's
  ``FrozenBatchNorm2d``, or a subclass that overrides ``forward`` (e.g. timm's
  BatchNormAct2d, or GroupNorm passed as ``norm_layer``): its semantics are unknown;
* a forward/backward hook on any submodule: the fused path would never call it;
* a convolution fused with its BatchNorm that has a bias, non-zero padding mode,
  string padding or a custom forward (conv_bn_relu takes a bias-free zero-padded conv);
* an activation other than ``nn.ReLU`` (the ops fuse ReLU), or an SE module other than
  :class:`~resnet_fast.models.blocks.SEModule` with its ReLU and sigmoid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import ops
from .._weight_cache import cached
from ..ops._folded_conv import channels_last, conv_weight, onednn_conv, uses_onednn_epilogue

Tensor = torch.Tensor

_BN_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)


@dataclass(slots=True)  # built for every BN on every forward: slots keep that cheap
class NormArgs:
    """One BatchNorm module as fused-op arguments (nn.BatchNorm2d.forward's semantics)."""
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    running_mean: Optional[Tensor]  # None when batch statistics are neither used from nor written to buffers
    running_var: Optional[Tensor]
    num_batches_tracked: Optional[Tensor]
    training: bool
    momentum: Optional[float]
    eps: float
    group_name: str  # SyncBatchNorm's process group when statistics are synchronized, else ""

    @property
    def tensors(self) -> tuple:
        return self.weight, self.bias, self.running_mean, self.running_var

    @property
    def kwargs(self) -> dict:
        return dict(training=self.training, momentum=self.momentum, eps=self.eps,
                    num_batches_tracked=self.num_batches_tracked, group_name=self.group_name)

    @property
    def identity_bn(self) -> tuple:
        """The ``identity_bn=`` argument of bn_add_relu / squeeze_excite."""
        return self.tensors + (self.num_batches_tracked,)

    @property
    def uses_batch_stats(self) -> bool:
        return self.training or self.running_mean is None

    def shares_config(self, other: "NormArgs") -> bool:
        """Whether ``other`` can ride along as ``identity_bn`` (the ops give both BNs one config)."""
        return (self.training, self.momentum, self.eps, self.group_name) == (
            other.training, other.momentum, other.eps, other.group_name)


def _is_frozen_bn(module: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d (detection backbones), recognized without importing torchvision.
    return type(module).__name__ == "FrozenBatchNorm2d" and all(
        isinstance(getattr(module, name, None), Tensor) for name in ("weight", "bias", "running_mean", "running_var"))


def _sync_group_name(bn: nn.Module) -> str:
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training and dist.is_available() and dist.is_initialized()):
        return ""
    group = bn.process_group or dist.group.WORLD
    return group.group_name if dist.get_world_size(group) > 1 else ""


BATCH_NORM, FROZEN = "batch_norm", "frozen"  # the kinds of norm the ops express


def norm_kind(bn: nn.Module) -> Optional[str]:
    """BATCH_NORM, FROZEN, or None when only ``bn``'s own forward is exact (a decision of its type)."""
    if isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)) and type(bn).forward in _BN_FORWARDS:
        return BATCH_NORM
    return FROZEN if _is_frozen_bn(bn) else None


def pack_norm(bn: nn.Module, kind: str) -> NormArgs:
    """``bn``'s tensors and settings as fused-op arguments, for a norm of ``kind`` (norm_kind(bn))."""
    if kind == BATCH_NORM:
        # As _BatchNorm.forward: buffers are read in eval, and read and updated in training only
        # when tracked; the ops use batch statistics when training or when given no buffers.
        use_buffers = not bn.training or bn.track_running_stats
        tracked = bn.training and bn.track_running_stats
        return NormArgs(bn.weight, bn.bias, bn.running_mean if use_buffers else None,
                        bn.running_var if use_buffers else None, bn.num_batches_tracked if tracked else None,
                        bn.training, bn.momentum, bn.eps, _sync_group_name(bn))
    return NormArgs(bn.weight, bn.bias, bn.running_mean, bn.running_var, None, False, 0.0, bn.eps, "")


def norm_args(bn: nn.Module) -> Optional[NormArgs]:
    """The fused-op arguments of BatchNorm ``bn``, or None when only its own forward is exact."""
    kind = norm_kind(bn)
    return None if kind is None else pack_norm(bn, kind)


def uses_batch_stats(bn: nn.Module) -> bool:
    """Whether ``bn`` normalizes by batch statistics (and so refuses one value per channel)."""
    args = norm_args(bn)
    if args is not None:
        return args.uses_batch_stats
    return isinstance(bn, _BatchNorm) and (bn.training or bn.running_mean is None)


def fusable_conv(conv: nn.Module) -> bool:
    """A bias-free, zero-padded nn.Conv2d whose forward is the stock one (its weight may be parametrized)."""
    return (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward
            and type(conv)._conv_forward is nn.Conv2d._conv_forward and conv.bias is None
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def hooked(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has a forward or backward hook the fused path would skip."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


def submodules(module: nn.Module) -> tuple:
    """Every module below ``module``."""
    return tuple(m for m in module.modules() if m is not module)


# ----------------------------------------------------------------------------- plans
# A block decides what it can fuse once per module state, not per forward: its plan holds the
# decisions (which path, each norm's kind, which convolutions are fusable), never tensors, and
# is made again when the state it was made for changes. What a plan depends on changes by
#  * assigning a submodule, parameter or buffer anywhere (a swapped activation, a conv given a
#    bias, a norm replaced): the global registration hooks below count these;
#  * a convolution's padding or padding mode (plain attributes): part of the plan's key;
#  * hooks added to a submodule: checked on every forward over the plan's module list (a few
#    dictionary truth tests).
# Everything else the ops read (training flags, momentum, eps, the tensors) is read per forward.
_structure_version = 0


def _structure_changed(*_args) -> None:
    global _structure_version
    _structure_version += 1


for _register in (nn.modules.module.register_module_module_registration_hook,
                  nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook):
    _register(_structure_changed)


def plan_of(block: nn.Module, convs: tuple, make):
    """``block``'s plan for its current state: ``make()``'s result, kept on the block and made again
    when a module structure changed or a convolution in ``convs`` changed its padding. Under
    torch.compile the plan is made while tracing (the decision is a guard of the graph, not kept)."""
    if torch.compiler.is_compiling():
        return make()
    key = (_structure_version,) + tuple((c.padding, c.padding_mode) for c in convs)
    cached = block.__dict__.get("_fusion_plan")
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = make()
    block.__dict__["_fusion_plan"] = (key, plan)  # a plain attribute: not in the state_dict
    return plan


def conv_bn(x: Tensor, conv: nn.Conv2d, bn: NormArgs, relu: bool = True, residual: Optional[Tensor] = None,
            recompute: bool = False) -> Tensor:
    """relu(bn(conv(x)) [+ residual]) through the fused op (``fusable_conv(conv)`` must hold);
    ``recompute``: backward recomputes conv(x) rather than keeping it (``recompute_conv``)."""
    return ops.conv_bn_relu(x, conv.weight, *bn.tensors, stride=conv.stride, padding=conv.padding,
                            dilation=conv.dilation, groups=conv.groups, relu=relu, residual=residual,
                            recompute_conv=recompute, **bn.kwargs)


def bn_relu_conv(y: Tensor, bn: NormArgs, conv: nn.Conv2d) -> Tensor:
    """conv(relu(bn(y))) through the fused op, which keeps y for backward and not the convolution's
    input (``fusable_conv(conv)`` must hold)."""
    return ops.bn_relu_conv(y, *bn.tensors, conv.weight, stride=conv.stride, padding=conv.padding,
                            dilation=conv.dilation, groups=conv.groups, **bn.kwargs)


def conv_add(x: Tensor, conv: nn.Conv2d, residual: Tensor) -> Tensor:
    """conv(x) + residual (a pre-activation block's end). In eager inference on CPU fp32, one
    oneDNN convolution with the add as its epilogue (no separate pass over the output; the
    weight prepared once per ``inference_cache()``); otherwise the module, then the add."""
    if (not torch.is_grad_enabled() and not torch.compiler.is_compiling() and fusable_conv(conv)
            and uses_onednn_epilogue(x) and residual.dtype == x.dtype):
        geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        weight = cached((conv.weight,), ("conv", channels_last(x), x.dtype) + geometry,
                        lambda: conv_weight(x, conv.weight, *geometry))
        return onednn_conv(x, weight, None, *geometry, False, residual)
    return conv(x) + residual


def recompute_conv_inputs() -> bool:
    """Whether blocks should chain conv -> bn_relu_conv (saving only raw convolution outputs for
    backward) rather than conv_bn_relu -> conv (whose eval path folds BN into the weights): when
    autograd records, i.e. when saved activations cost memory."""
    return torch.is_grad_enabled()


@dataclass(frozen=True)
class DownsamplePlan:
    """What a block decided about its downsample (see plan_of): a torchvision-style
    ``Sequential(conv, bn)`` whose norm the ops express (``bn_kind``), and whether its
    convolution fuses; ``bn_kind`` None for any other module (called as it is)."""
    bn_kind: Optional[str]
    conv_fusable: bool


def downsample_plan(downsample: Optional[nn.Module]) -> Optional[DownsamplePlan]:
    """The decisions about ``downsample``; None without one."""
    if downsample is None:
        return None
    if isinstance(downsample, nn.Sequential) and len(downsample) == 2 and isinstance(downsample[0], nn.Conv2d):
        kind = norm_kind(downsample[1])
        if kind is not None:
            return DownsamplePlan(kind, fusable_conv(downsample[0]))
    return DownsamplePlan(None, False)


def downsample_parts(downsample: Optional[nn.Module], plan: Optional[DownsamplePlan] = None):
    """(conv, NormArgs) of a torchvision-style ``Sequential(conv, bn)`` downsample, else None;
    ``plan``: its downsample_plan, when the block has it already."""
    if plan is None:
        plan = downsample_plan(downsample)
    if plan is None or plan.bn_kind is None:
        return None
    return downsample[0], pack_norm(downsample[1], plan.bn_kind)


def conv_residual_tail(out: Tensor, conv: nn.Conv2d, bn: NormArgs, x: Tensor, downsample: Optional[nn.Module],
                       se: tuple = (), plan: Optional[DownsamplePlan] = None, conv_fusable: Optional[bool] = None) -> Tensor:
    """relu(bn(conv(out)) [* SE gate] + identity): a block's last convolution and its tail.

    In inference (running statistics, no autograd, no SE) the convolution takes the whole
    tail as its epilogue: one conv_bn_relu with ``residual``, BN folded into the weights,
    identity = x or the downsample's folded conv_bn. Otherwise the convolution, then the
    fused tail op (``residual_tail``). ``plan``: the downsample's plan; ``conv_fusable``:
    fusable_conv(conv), when the block decided it already.
    """
    if conv_fusable is None:
        conv_fusable = fusable_conv(conv)
    if not se and not bn.uses_batch_stats and not torch.is_grad_enabled() and conv_fusable:
        return conv_bn(out, conv, bn, residual=identity_branch(x, downsample, plan=plan))
    return residual_tail(conv(out), bn, x, downsample, se, plan)


def identity_branch(x: Tensor, downsample: Optional[nn.Module], recompute: bool = False,
                    plan: Optional[DownsamplePlan] = None) -> Tensor:
    """The block's identity branch on its own: x, a ``Sequential(conv, bn)`` downsample as one
    conv_bn (no ReLU; ``recompute``: its convolution recomputed in backward, not kept), or any
    other downsample module called; ``plan``: the downsample's plan, when the block has it."""
    if downsample is None:
        return x
    if plan is None:
        plan = downsample_plan(downsample)
    parts = downsample_parts(downsample, plan)
    if parts is not None and plan.conv_fusable:
        return conv_bn(x, parts[0], parts[1], relu=False, recompute=recompute)
    return downsample(x)


def residual_tail(y: Tensor, bn: NormArgs, x: Tensor, downsample: Optional[nn.Module], se: tuple = (),
                  plan: Optional[DownsamplePlan] = None, batch_stats: Optional[tuple] = None) -> Tensor:
    """relu(bn(y) [* SE gate] + identity), identity = x or downsample(x), through one fused op.

    ``se``: (fc1.weight, fc1.bias, fc2.weight, fc2.bias) of the SE module, or () without SE.

    A ``Sequential(conv, bn)`` downsample runs as a plain conv whose BatchNorm is applied
    inside the tail op (``identity_bn``) when it shares the tail BN's training flag,
    momentum, eps and process group (always, in the models built here); otherwise as a
    separate conv_bn (no ReLU), or, for any other module, by calling it. ``batch_stats``: y's
    (mean, biased variance) from its producer (the fused convolution chain), used without SE.
    """
    parts = downsample_parts(downsample, plan)
    if parts is not None and parts[1].shares_config(bn):
        identity, identity_bn = parts[0](x), parts[1].identity_bn
    else:
        identity, identity_bn = identity_branch(x, downsample, plan=plan), None
    if se:
        return ops.squeeze_excite(y, *bn.tensors, *se, identity, identity_bn=identity_bn, **bn.kwargs)
    return ops.bn_add_relu(y, *bn.tensors, identity, identity_bn=identity_bn, batch_stats=batch_stats, **bn.kwargs)
