"""The direct eager call of the fused ops (ops/_direct_call.py) against the registered op.

In plain eager mode the functional API runs each op's forward / setup_context / backward
as a plain autograd.Function instead of through torch's custom-op dispatch. Both paths run
the same Python and kernels, so outputs, every gradient and the running statistics must be
equal bit for bit; and everything that needs the registered op (a dispatch mode,
torch.compile) must still get it.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resnet_fast import ops
from resnet_fast.ops import _direct_call

C, HIDDEN = 6, 3


def bn(seed):
    g = torch.Generator().manual_seed(seed)
    return {"weight": (torch.rand(C, generator=g) + 0.5).requires_grad_(),
            "bias": torch.randn(C, generator=g).requires_grad_(),
            "running_mean": torch.randn(C, generator=g) * 0.1, "running_var": torch.rand(C, generator=g) + 0.5,
            "num_batches_tracked": torch.tensor(2)}


def activation(seed, shape=(2, C, 5, 4), fmt=torch.channels_last):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) + 0.3).contiguous(memory_format=fmt).requires_grad_()


def case(op, training, fmt):
    """(call(inputs) -> output, inputs) of ``op`` on small float32 inputs."""
    inputs = {"y": activation(0, fmt=fmt), "identity": activation(1, fmt=fmt), "bn": bn(2), "id_bn": bn(3),
              "conv_weight": (torch.randn(C, C, 3, 3, generator=torch.Generator().manual_seed(4)) * 0.2
                              ).requires_grad_(),
              "fc1_weight": torch.randn(HIDDEN, C, 1, 1).requires_grad_(), "fc1_bias": torch.randn(HIDDEN),
              "fc2_weight": torch.randn(C, HIDDEN, 1, 1).requires_grad_(), "fc2_bias": torch.randn(C)}

    def call(i):
        b, kw = i["bn"], dict(training=training, num_batches_tracked=i["bn"]["num_batches_tracked"])
        affine = (b["weight"], b["bias"], b["running_mean"], b["running_var"])
        id_bn = tuple(i["id_bn"].values())
        if op == "bn_relu":
            return ops.bn_relu(i["y"], *affine, **kw)
        if op == "bn_add_relu":
            return ops.bn_add_relu(i["y"], *affine, i["identity"], identity_bn=id_bn, **kw)
        if op == "squeeze_excite":
            return ops.squeeze_excite(i["y"], *affine, i["fc1_weight"], i["fc1_bias"], i["fc2_weight"],
                                      i["fc2_bias"], i["identity"], **kw)
        if op == "conv_bn_relu":
            return ops.conv_bn_relu(i["y"], i["conv_weight"], *affine, padding=1, residual=i["identity"], **kw)
        return ops.bn_relu_conv(i["y"], *affine, i["conv_weight"], padding=1, **kw)

    return call, inputs


def leaves(inputs):
    flat = [inputs["y"], inputs["identity"], inputs["conv_weight"], inputs["fc1_weight"], inputs["fc2_weight"]]
    flat += [inputs[k][p] for k in ("bn", "id_bn") for p in ("weight", "bias")]
    return flat


def run(call, inputs, grad_enabled):
    inputs = copy.deepcopy(inputs)
    with torch.set_grad_enabled(grad_enabled):
        out = call(inputs)
    grads = []
    if grad_enabled:
        grads = torch.autograd.grad(out, leaves(inputs), torch.linspace(-1, 1, out.numel()).view_as(out),
                                    allow_unused=True)
    buffers = [inputs[k][b] for k in ("bn", "id_bn") for b in ("running_mean", "running_var", "num_batches_tracked")]
    return out, grads, buffers


OPS = ("bn_relu", "bn_add_relu", "squeeze_excite", "conv_bn_relu", "bn_relu_conv")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
@pytest.mark.parametrize("op", OPS)
def test_same_results_as_the_registered_op(op_backend, op, mode, fmt):
    call, inputs = case(op, training=mode == "train", fmt=fmt)
    grad_enabled = mode != "inference"
    direct = run(call, inputs, grad_enabled)
    with _direct_call.through_dispatcher():
        registered = run(call, inputs, grad_enabled)
    assert direct[0].grad_fn is None or direct[0].grad_fn.name().endswith("_directBackward")
    assert registered[0].grad_fn is None or "GeneratedBackwardFor" in registered[0].grad_fn.name()
    for what, a, b in zip(("output", "gradients", "running statistics"), direct, registered):
        a, b = (a, b) if isinstance(a, list) or isinstance(a, tuple) else ([a], [b])
        for i, (x, y) in enumerate(zip(a, b)):
            assert (x is None) == (y is None), f"{what}[{i}]"
            assert x is None or torch.equal(x, y), f"{what}[{i}] differs"


def test_plain_eager_takes_the_direct_call():
    call, inputs = case("bn_add_relu", training=True, fmt=torch.channels_last)
    out = call(inputs)
    assert out.grad_fn.name() == "bn_add_relu_directBackward"


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_registered_op():
    call, inputs = case("bn_relu", training=True, fmt=torch.channels_last)
    with OpLog() as log:
        call(inputs)
    assert "resnet_fast.bn_relu.default" in log.names


def test_torch_compile_traces_the_registered_op():
    call, inputs = case("bn_relu", training=True, fmt=torch.channels_last)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes)
        return gm

    torch._dynamo.reset()
    torch.compile(call, backend=backend, fullgraph=True)(inputs)
    assert "resnet_fast.bn_relu.default" in seen


@pytest.mark.parametrize("path", ["direct", "dispatcher"])
def test_forward_mode_ad_gives_eager_tangents(path):
    """A tangent reaching an op takes the reference backend's plain-torch forward (the registered
    op would drop it: torch.func.jvp through it returned zeros); the running statistics are
    updated as without forward AD and carry no tangent."""
    import torch.autograd.forward_ad as fwAD

    from resnet_fast.ops import reference

    g = torch.Generator().manual_seed(0)
    x, tangent = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    weight, bias = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    results = []
    for module in (ops, reference):
        running_mean, running_var = torch.zeros(3), torch.ones(3)
        routing = _direct_call.through_dispatcher() if path == "dispatcher" else contextlib.nullcontext()
        with routing, fwAD.dual_level():
            out = module.bn_relu(fwAD.make_dual(x, tangent), weight, bias, running_mean, running_var, training=True)
            primal, out_tangent = fwAD.unpack_dual(out)
            assert fwAD.unpack_dual(running_mean).tangent is None
            results.append((primal.clone(), out_tangent.clone(), running_mean.clone(), running_var.clone()))
    for fused, eager in zip(*results):
        torch.testing.assert_close(fused, eager)
