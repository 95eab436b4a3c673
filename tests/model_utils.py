"""Shared helpers of the model tests: random weights, and a model-vs-model comparison.

Tolerance: everything runs in float64, where the fused ops and eager PyTorch differ only
by the order of floating-point operations (eval mode folds BN into the conv weights);
relative errors are ~1e-14 on these small models, so 1e-10 (the issue's bound) leaves
four orders of magnitude of slack without hiding a wrong formula (that gives ~1e-2).
The relative error of a tensor is max|a - b| / max|b|.

Train-mode inputs are 2x3x48x48: the last stage's feature map is then 2x2, 8 values per
BatchNorm channel. With fewer, BatchNorm's backward is ill-conditioned (with 2 values
its input gradient is exactly zero, x_hat = +-1) and even two eager runs (NCHW vs
NHWC torchvision) of resnet101 differ by 1e-10 in the input gradient; with 8 values the
fused-vs-eager error of resnet101's gradients is ~1e-11 at most.
"""
from __future__ import annotations

import os
from typing import Optional

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import resnet_fast

TOL = 1e-10
DTYPE = torch.float64
FORMATS = [torch.contiguous_format, torch.channels_last]
FORMAT_IDS = ["nchw", "nhwc"]


@pytest.fixture(autouse=True, scope="module")
def reference_backend():
    """Run the model tests on the eager reference backend unless RESNET_FAST_BACKEND says otherwise."""
    before = resnet_fast.get_backend()
    resnet_fast.set_backend(os.environ.get("RESNET_FAST_BACKEND", "reference"))
    yield
    resnet_fast.set_backend(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:
        return 0.0
    inf = float("inf")
    diff = torch.linalg.vector_norm(a.to(b.dtype) - b, inf).item()
    scale = torch.linalg.vector_norm(b, inf).item()
    return diff / scale if scale > 0 else diff


def assert_close(a, b, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = rel_err(a, b)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial float64 weights and BN statistics (torchvision's init has gamma=1, beta=0, mean=0, var=1).

    Uniform draws (cheaper than normal ones on 100M-parameter models) with He-like scales.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform_(t: torch.Tensor, low: float, high: float) -> None:
        t.uniform_(low, high, generator=gen)

    model.to(DTYPE)
    for name, buffer in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            buffer.zero_()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1] // module.groups
            bound = (6 / fan_out) ** 0.5  # std sqrt(2 / fan_out), as kaiming_normal_(mode="fan_out")
            uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                uniform_(module.bias, -0.2, 0.2)
        elif isinstance(module, nn.Linear):
            uniform_(module.weight, -0.1, 0.1)
            uniform_(module.bias, -0.2, 0.2)
        elif isinstance(module, _BatchNorm) or type(module).__name__ == "FrozenBatchNorm2d":
            if module.weight is not None:
                uniform_(module.weight, 0.5, 1.5)
                uniform_(module.bias, -0.3, 0.3)
            if module.running_mean is not None:
                uniform_(module.running_mean, -0.3, 0.3)
                uniform_(module.running_var, 0.5, 1.5)
    return model


def copy_model(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Load ``src``'s state into ``dst`` (strict); ``dst`` may live on the meta device.

    Buffers are cloned (training updates them in place); parameters share ``src``'s storage
    in new Parameter objects (forward and backward never write them; each has its own .grad).
    """
    buffers = {name for name, _ in src.named_buffers()}
    state = {k: v.clone() if k in buffers else v for k, v in src.state_dict().items()}
    dst.load_state_dict(state, strict=True, assign=True)
    return dst


def build_pair(ours_fn, ref_fn, seed: int = 0):
    """(ours, reference) with the same random float64 state; built on the meta device (no init cost)."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device("meta"):
            ours, ref = ours_fn(), ref_fn()
    finally:
        torch.set_default_dtype(default_dtype)
    ours = randomize_(ours.to_empty(device="cpu"), seed)
    return ours, copy_model(ours, ref)


@torch.no_grad()
def calibrate_(ours: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """Running statistics consistent with the weights, as a trained model has: the batch statistics of ``x``.

    Deep models in eval mode with arbitrary random statistics blow activations up (1e13 in
    seresnet152) and are so ill-conditioned that two eager runs (NCHW vs NHWC) of timm's
    seresnet152 differ by 2e-5. Calibrated on a 2x3x64x64 batch and evaluated on it, fused
    and eager agree to 1e-12 (and so do the two eager runs).
    """
    norms = [m for m in ref.modules() if isinstance(m, _BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.momentum = 1.0
        m.train()
    ref(x)
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)
    ours.load_state_dict(ref.state_dict())


def make_input(shape=(2, 3, 48, 48), seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def compare_models(ours: nn.Module, ref: nn.Module, x: torch.Tensor, *, train: Optional[bool],
                   backward: bool = True, memory_format=torch.contiguous_format, tol: float = TOL) -> torch.Tensor:
    """Run both models on ``x``; assert outputs, every gradient and every buffer agree. Returns our output.

    ``train``: the mode to put both models in; None leaves their modules' modes as they are.
    """
    for model in (ours, ref):
        model.to(memory_format=memory_format)
        if train is not None:
            model.train(train)
        model.zero_grad(set_to_none=True)
    inputs = [x.to(memory_format=memory_format).clone().requires_grad_(backward) for _ in range(2)]
    out_ours, out_ref = ours(inputs[0]), ref(inputs[1])
    assert_close(out_ours, out_ref, "output", tol)
    if backward:
        grad = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(2), dtype=out_ref.dtype)
        out_ours.backward(grad)
        out_ref.backward(grad)
        assert_close(inputs[0].grad, inputs[1].grad, "input gradient", tol)
        ref_params = dict(ref.named_parameters())
        for name, param in ours.named_parameters():
            other = ref_params[name]
            assert (param.grad is None) == (other.grad is None), f"{name}: gradient presence differs"
            if param.grad is not None:
                assert_close(param.grad, other.grad, f"gradient of {name}", tol)
    assert_same_state(ours, ref, tol)
    return out_ours


def assert_same_state(ours: nn.Module, ref: nn.Module, tol: float = TOL) -> None:
    """Same state_dict keys, and the same buffers (running statistics, num_batches_tracked).

    Parameters are not compared: forward and backward never change them.
    """
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref_buffers = dict(ref.named_buffers())
    for name, value in ours.named_buffers():
        if value.is_floating_point():
            assert_close(value, ref_buffers[name], name, tol)
        else:
            assert torch.equal(value, ref_buffers[name]), f"{name}: {value} != {ref_buffers[name]}"


def state_snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, snapshot: dict) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot[name]), f"{name} changed"
