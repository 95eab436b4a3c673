"""Whether a BasicBlock / Bottleneck runs its convolutions through the fused Triton chain, and running it.

The chain is the block's main branch up to its last BatchNorm: conv1 -> [bn1+ReLU] conv2
(-> [bn2+ReLU] conv3), ``ops.fused_conv_chain``; the tail (last BN + residual [+ SE] + ReLU,
the downsample's conv and BN included) stays today's fused op, so the two paths meet at that BN.
``resnet_fast.set_conv_backend`` decides, per block, on each forward:

* "aten": never (today's path).
* "triton" (forced): always, and a block whose chain the kernels do not cover raises a
  RuntimeError that names what (the layer and the reason). "Forced" applies to the chain's
  convolutions only: the stem, the downsample convolution and the SE MLP are not block-chain
  convolutions and run ATen under every choice, so a whole model with a stem runs forced. An
  NCHW-contiguous input is converted to channels_last (one copy per block; the gradient flows back
  through the copy); ``low_memory`` does not apply (the tail keeps the last raw output).
* "auto": the chain when it is covered, the input is channels_last already, autograd records (in
  inference today's path folds BN into the weights), the block is not ``low_memory``, and the conv
  table (``conv_backend.table_chooses_triton``) chose "triton" for every convolution of the chain on
  this GPU and dtype; today's path otherwise (on CPU tensors always).

Covered: CUDA tensors (CPU tensors under TRITON_INTERPRET=1), float16 / bfloat16 / float32 (after
autocast), stock bias-free zero-padded nn.Conv2d with 1x1 (padding 0) or 3x3 (padding 1) kernels,
stride 1 or 2, groups 1, dilation 1, and BatchNorms without synchronized statistics. Not covered:
the grouped 3x3 of ResNeXt, dilated convolutions, SyncBatchNorm across a process group, float64.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .. import conv_backend, ops
from ..ops._autocast import autocast_dtype
from ._fusion import DownsamplePlan, NormArgs, fusable_conv, residual_tail

Tensor = torch.Tensor
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _uncovered_conv(name: str, conv: nn.Module) -> Optional[str]:
    if not fusable_conv(conv):
        return f"{name} is not a stock bias-free zero-padded nn.Conv2d"
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if conv.groups != 1:
        return f"{name} is grouped (groups={conv.groups}; the kernels take groups=1)"
    if d != (1, 1):
        return f"{name} is dilated (dilation={tuple(d)}; the kernels take 1)"
    if k[0] != k[1] or k[0] not in (1, 3):
        return f"{name} has a {k[0]}x{k[1]} kernel (the kernels take 1x1 and 3x3)"
    if s[0] != s[1] or s[0] not in (1, 2):
        return f"{name} has stride {tuple(s)} (the kernels take 1 or 2)"
    if p[0] != p[1] or p[0] != (k[0] - 1) // 2:
        return f"{name} has padding {tuple(p)} with a {k[0]}x{k[1]} kernel (the kernels take {(k[0] - 1) // 2})"
    return None


def uncovered(x: Tensor, convs: Sequence[tuple[str, nn.Module]],
              norms: Sequence[tuple[str, NormArgs]]) -> Optional[str]:
    """None when the fused chain covers ``convs`` (named) with ``norms`` between them on x, else why not."""
    why = conv_backend.runs_on(x.device)
    if why is not None:
        return why
    dtype = autocast_dtype(x) or x.dtype
    if dtype not in _DTYPES:
        return f"activations of dtype {dtype} (the kernels take float16, bfloat16, float32)"
    for name, conv in convs:
        why = _uncovered_conv(name, conv)
        if why is not None:
            return why
        if autocast_dtype(x) is None and conv.weight.dtype != x.dtype:
            return f"{name}'s weight is {conv.weight.dtype}, its input {x.dtype}"
    for name, bn in norms:
        if bn.group_name:
            return f"{name} synchronizes its statistics across a process group (SyncBatchNorm)"
    return None


def _layers(x: Tensor, convs: Sequence[nn.Conv2d]) -> list[tuple]:
    """The conv table's (in_channels, height, width, out_channels, kernel, stride) of each convolution."""
    h, w = x.shape[2], x.shape[3]
    layers = []
    for conv in convs:
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        layers.append((conv.in_channels, h, w, conv.out_channels, k, s))
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return layers


def _bn_dict(bn: NormArgs) -> dict:
    return dict(weight=bn.weight, bias=bn.bias, running_mean=bn.running_mean, running_var=bn.running_var,
                num_batches_tracked=bn.num_batches_tracked, training=bn.training, momentum=bn.momentum, eps=bn.eps)


def fused_block_forward(block: nn.Module, x: Tensor, conv_names: Sequence[str], chain_norms: Sequence[NormArgs],
                        tail_norm: NormArgs, se: tuple, downsample: Optional[DownsamplePlan] = None
                        ) -> Optional[Tensor]:
    """The block's output through the fused chain and today's tail, or None where the chain does not apply
    (module docstring). ``conv_names``: the block's chain convolutions in order (e.g. conv1, conv2, conv3);
    ``chain_norms``: the NormArgs of the BNs between them; ``tail_norm``, ``se``: what the tail takes;
    ``downsample``: the block's plan of its downsample (_fusion.downsample_plan), when it has one."""
    choice = conv_backend.get_conv_backend()
    if choice == "aten" or (choice == "auto" and not conv_backend.has_table()):
        return None  # (auto without a table, as shipped until a GPU run writes one: nothing to decide per forward)
    convs = [getattr(block, name) for name in conv_names]
    norm_names = [f"bn{i + 1}" for i in range(len(chain_norms))]
    why = uncovered(x, list(zip(conv_names, convs)), list(zip(norm_names, chain_norms)))
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if choice == "triton":
        if why is not None:
            raise RuntimeError(f"resnet_fast: set_conv_backend('triton') (or RESNET_FAST_CONV_BACKEND=triton): "
                               f"{type(block).__name__} cannot run its convolutions fused: {why}. Use 'auto' to "
                               "run such blocks on ATen.")
    elif (why is not None or not channels_last or not torch.is_grad_enabled() or getattr(block, "low_memory", False)
          or not conv_backend.table_chooses_triton(x.device, autocast_dtype(x) or x.dtype, _layers(x, convs))):
        return None
    x_in = x if channels_last else x.contiguous(memory_format=torch.channels_last)
    # The last convolution's epilogue computed y's statistics: the tail takes them instead of a pass over y
    # (without SE, whose squeeze needs per-sample means).
    y, mean, var = ops.fused_conv_chain(x_in, [c.weight for c in convs], [c.stride[0] for c in convs],
                                        [c.padding[0] for c in convs], [_bn_dict(bn) for bn in chain_norms],
                                        return_stats=True)
    return residual_tail(y, tail_norm, x, block.downsample, se, downsample, batch_stats=(mean, var))
