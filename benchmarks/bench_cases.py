"""What is benchmarked: op inputs at ResNet-50 stage shapes, bytes moved, and the models.

Op inputs are built from a seed, so two builds (one for the contender, one for the eager
reference it is checked against) are identical, running statistics included.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import bench_config as config
from bench_config import EXPANSION

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- op inputs
CONV_OPS = ("conv_bn_relu", "bn_relu_conv")  # the ops with a 3x3 convolution inside


@dataclass
class OpCase:
    """One op call: ``fn(*args, training=..., **kwargs)``; ``grad_inputs`` get gradients."""

    op: str
    shape: tuple                      # the activation the op normalizes: y (block tails, bn_relu) or conv output
    args: tuple
    kwargs: dict
    activations: list                 # activation inputs (require grad)
    params: list                      # learnable parameters (require grad)
    buffers: list = field(default_factory=list)

    @property
    def grad_inputs(self) -> list:
        return self.activations + self.params

    def call(self, fn: Callable, training: bool) -> Tensor:
        return fn(*self.args, training=training, **self.kwargs)


def op_shapes(op: str, stage: tuple, batch: int) -> tuple[tuple, Optional[tuple]]:
    """(activation shape, conv input shape or None) at one stage (width, spatial size).

    conv_bn_relu and bn_relu_conv: the bottleneck's 3x3 conv, width -> width at stride 1
    (bn_relu_conv normalizes its input, so both shapes are the same). The other ops run on
    the block output, EXPANSION times wider (bn_relu: a pre-activation block's input).
    """
    width, size = stage
    if op in CONV_OPS:
        return (batch, width, size, size), (batch, width, size, size)
    return (batch, width * EXPANSION, size, size), None


def _bn_tensors(channels: int, device, generator) -> tuple:
    def rand(scale, offset):
        return torch.rand(channels, generator=generator, device=device) * scale + offset

    weight = rand(1.0, 0.5).requires_grad_()
    bias = (torch.randn(channels, generator=generator, device=device) * 0.1).requires_grad_()
    running_mean = torch.randn(channels, generator=generator, device=device) * 0.1
    running_var = rand(1.0, 0.5)
    num_batches_tracked = torch.zeros((), dtype=torch.long, device=device)
    return weight, bias, running_mean, running_var, num_batches_tracked


def make_op_case(op: str, stage: tuple, batch: int, device: str, dtype: torch.dtype, seed: int = 0) -> OpCase:
    """Inputs of ``op`` at ``stage``; activations in ``dtype``, parameters in fp32 (as under autocast).

    Drawn on ``device`` from a seeded generator there (a (256, 256, 56, 56) tensor drawn on
    the CPU would take seconds).
    """
    g = torch.Generator(device=device).manual_seed(seed)
    shape, conv_in = op_shapes(op, stage, batch)
    channels = shape[1]

    def randn(*s, scale=1.0):
        return torch.randn(*s, generator=g, device=device) * scale

    def act(s):
        t = torch.randn(*s, generator=g, device=device, dtype=dtype)
        return t.contiguous(memory_format=config.settings().memory_format).requires_grad_()

    weight, bias, running_mean, running_var, nbt = _bn_tensors(channels, device, g)
    buffers = [running_mean, running_var, nbt]
    bn_kwargs = {"num_batches_tracked": nbt}
    if op in CONV_OPS:
        x = act(conv_in)
        conv_w = randn(channels, conv_in[1], 3, 3, scale=math.sqrt(2.0 / (conv_in[1] * 9)))
        conv_w = conv_w.contiguous(memory_format=config.settings().memory_format).requires_grad_()
        bn = (weight, bias, running_mean, running_var)
        args = (x, conv_w, *bn) if op == "conv_bn_relu" else (x, *bn, conv_w)
        return OpCase(op, shape, args, dict(stride=1, padding=1, **bn_kwargs), [x], [conv_w, weight, bias], buffers)
    y = act(shape)
    if op == "bn_relu":
        return OpCase(op, shape, (y, weight, bias, running_mean, running_var), bn_kwargs, [y], [weight, bias], buffers)
    identity = act(shape)
    if op == "bn_add_relu":
        return OpCase(op, shape, (y, weight, bias, running_mean, running_var, identity), bn_kwargs, [y, identity],
                      [weight, bias], buffers)
    if op == "squeeze_excite":
        hidden = max(channels // 16, 2)  # timm SE-ResNet: rd_ratio 1/16
        fc1_w = randn(hidden, channels, 1, 1, scale=1 / math.sqrt(channels)).requires_grad_()
        fc1_b = torch.zeros(hidden, device=device).requires_grad_()
        fc2_w = randn(channels, hidden, 1, 1, scale=1 / math.sqrt(hidden)).requires_grad_()
        fc2_b = torch.zeros(channels, device=device).requires_grad_()
        return OpCase(op, shape, (y, weight, bias, running_mean, running_var, fc1_w, fc1_b, fc2_w, fc2_b, identity),
                      bn_kwargs, [y, identity], [weight, bias, fc1_w, fc1_b, fc2_w, fc2_b], buffers)
    raise ValueError(f"unknown op {op!r}")


def op_step(fn: Callable, case: OpCase, mode: str) -> Callable[[], list]:
    """What one timed call does, and the tensors it yields for the correctness check."""
    if mode == "infer":
        def run():
            with torch.no_grad():
                return [case.call(fn, training=False)]
        return run
    if mode == "fwd":
        return lambda: [case.call(fn, training=True)]
    if mode == "fwdbwd":
        # The incoming gradient is made once, outside the timed call: a fresh randn of an
        # activation costs more than the op itself on CPU and would swamp the ratios.
        grad = grad_out_for(case.call(fn, training=True))

        def run():
            out = case.call(fn, training=True)
            return [out, *torch.autograd.grad(out, case.grad_inputs, grad, allow_unused=True)]
        return run
    out = case.call(fn, training=True)  # bwd: one graph, backward run again and again
    grad = grad_out_for(out)
    return lambda: list(torch.autograd.grad(out, case.grad_inputs, grad, retain_graph=True, allow_unused=True))


def grad_out_for(out: Tensor) -> Tensor:
    g = torch.Generator(device=out.device).manual_seed(1)
    grad = torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)
    return grad.contiguous(memory_format=config.settings().memory_format)


# ----------------------------------------------------------------------------- bytes and flops
def op_bytes(op: str, mode: str, stage: tuple, batch: int, elem_bytes: int) -> int:
    """Fewest bytes the fused computation must read plus write (activation-sized tensors and
    the conv weight; per-channel vectors are negligible and left out).

    S = one activation. Forward / inference read each input once and write the output once;
    backward reads what was saved plus the output gradient and writes each input gradient
    once: bn_relu fwd 2S, bwd 3S (x, dout -> dx); bn_add_relu / squeeze_excite fwd 3S
    (y, identity -> out), bwd 5S (y, identity, dout -> dy, didentity); conv_bn_relu and
    bn_relu_conv fwd X + W + Y, bwd 2X + 2W + 2Y (x, w, y, dout -> dx, dw; bn_relu_conv's
    X is its input y and Y its output). fwdbwd is the sum.
    """
    shape, conv_in = op_shapes(op, stage, batch)
    s = math.prod(shape) * elem_bytes
    if op in CONV_OPS:
        x = math.prod(conv_in) * elem_bytes
        w = shape[1] * conv_in[1] * 9 * elem_bytes
        fwd, bwd = x + w + s, 2 * (x + w + s)
    elif op == "bn_relu":
        fwd, bwd = 2 * s, 3 * s
    else:
        fwd, bwd = 3 * s, 5 * s
    return {"fwd": fwd, "infer": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def op_flops(op: str, mode: str, stage: tuple, batch: int) -> int:
    """Convolution FLOPs (2 per multiply-add; backward = 2x forward); 0 for the elementwise ops."""
    if op not in CONV_OPS:
        return 0
    shape, conv_in = op_shapes(op, stage, batch)
    fwd = 2 * math.prod(shape) * conv_in[1] * 9
    return {"fwd": fwd, "infer": fwd, "bwd": 2 * fwd, "fwdbwd": 3 * fwd}[mode]


# ----------------------------------------------------------------------------- models
# name -> (library, builder) of the eager contender whose weights resnet_fast's model loads.
EAGER_MODELS = {
    "resnet50": ("torchvision", "resnet50"),
    "resnet18": ("torchvision", "resnet18"),
    "resnext50_32x4d": ("torchvision", "resnext50_32x4d"),
    "se_resnet50": ("timm", "seresnet50"),
    "preact_resnet50": ("timm", "resnetv2_50"),
}


_eager_cache: dict = {}


def build_eager_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A fresh copy of the eager model (random init from ``seed``, on the CPU).

    Built once per (name, seed) and deep-copied after: initializing 25M parameters costs
    more than the smoke-mode step itself.
    """
    key = (name, seed)
    if key not in _eager_cache:
        _eager_cache[key] = _build_eager_model(name, seed)
    return copy.deepcopy(_eager_cache[key])


def _build_eager_model(name: str, seed: int) -> torch.nn.Module:
    library, builder = EAGER_MODELS[name]
    torch.manual_seed(seed)
    if library == "torchvision":
        import torchvision

        return getattr(torchvision.models, builder)()
    import timm

    return timm.create_model(builder, pretrained=False)


def build_resnet_fast_model(name: str) -> tuple[Optional[torch.nn.Module], str]:
    """(model, "") from ``resnet_fast.get_model(name)``, or (None, why not)."""
    import resnet_fast

    get_model = getattr(resnet_fast, "get_model", None)
    if get_model is None:
        return None, "resnet_fast.get_model is not available on this branch (models not merged yet)"
    try:
        return get_model(name), ""
    except (KeyError, ValueError, NotImplementedError) as error:
        return None, f"resnet_fast.get_model({name!r}) failed: {error}"


def contender_model(name: str, eager: torch.nn.Module, contender: str,
                    device: str) -> tuple[Optional[torch.nn.Module], str]:
    """(model, "") for a model-level contender, or (None, why not). eager: ``eager`` itself;
    compile / compile_max: torch.compile of it (config.compile_settings);
    rf_<backend>[_cached|_low_memory|_conv_<name>]: resnet_fast's model with ``eager``'s weights (strict), in
    the run's memory format on ``device``, ``set_low_memory()`` for the _low_memory ones. The caller selects
    the backend and the convolution backend (config.contender_backend / contender_conv_backend)."""
    if contender == "eager":
        return eager, ""
    if contender in config.COMPILE_MODES:
        return config.compile_fn(eager, contender), ""
    model, why = build_resnet_fast_model(name)
    if model is None:
        return None, why
    model.load_state_dict(eager.state_dict(), strict=True)
    if contender.endswith(config.LOW_MEMORY_SUFFIX):
        model.set_low_memory()
    return model.to(device, memory_format=config.settings().memory_format), ""
