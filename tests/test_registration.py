"""Every primitive: torch.library.opcheck; every fused op: torch.compile(fullgraph=True) tracing."""
import pytest
import torch

import resnet_fast  # noqa: F401  (registers the ops)
from op_testing import bn_state
from resnet_fast import _extension, ops
from resnet_fast.models import Bottleneck, ResNet
from resnet_fast.ops import primitives

FUSED_OPS = ("conv_bn_relu", "bn_relu_conv", "bn_add_relu", "squeeze_excite", "bn_relu")
PRIMITIVES = tuple(primitives.PRIMITIVES)


@pytest.mark.parametrize("name", PRIMITIVES)
def test_primitive_schemas_are_declared_once_in_python(name):
    """The schema is primitives.SCHEMAS's (the compiled library only implements it), and every
    primitive has a CPU and a CUDA kernel: compiled, or the reference where none was built."""
    op = getattr(torch.ops.resnet_fast, name).default
    assert str(op._schema) == f"resnet_fast::{name}{primitives.SCHEMAS[name]}"
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"resnet_fast::{name}", key), key
    if _extension.load():
        assert name in _extension.OPS


def _bn(c, dtype=torch.float32):
    s = bn_state(c, seed=0)
    return [s[k].to(dtype) for k in ("weight", "bias", "running_mean", "running_var")]


def test_fused_ops_are_functions_not_ops():
    """One route: the fused ops are autograd Functions over the primitives, not registered ops too."""
    for name in FUSED_OPS:
        assert not hasattr(torch.ops.resnet_fast, name), name
    assert not any(hasattr(torch.ops.resnet_fast, f"triton_{name}") for name in PRIMITIVES)


def test_plain_eager_applies_the_old_style_twin():
    """Plain eager takes each Function's old-style twin (ops/_function.py: its apply costs a fraction
    of the setup_context style's); a torch.func transform takes the setup_context class."""
    x = torch.randn(2, 5, 3, 3, requires_grad=True)
    weight, bias, running_mean, running_var = _bn(5)
    out = ops.bn_relu(x, weight, bias, running_mean, running_var, training=True)
    assert type(out.grad_fn).__name__ == "BnReluFunctionPlainBackward"
    identity = torch.randn(2, 5, 3, 3, requires_grad=True)
    out = ops.bn_add_relu(x, weight, bias, running_mean, running_var, identity, training=True)
    assert type(out.grad_fn).__name__ == "BnAddReluFunctionPlainBackward"

    def loss(x):
        return ops.bn_relu(x, weight, bias, None, None, training=True).sum()

    assert torch.allclose(torch.func.grad(loss)(x.detach()), torch.autograd.grad(
        ops.bn_relu(x, weight, bias, None, None, training=True).sum(), x)[0], atol=1e-6)


def primitive_samples(fmt):
    """(primitive, args) samples: both layouts, with and without the optional tensors."""
    y = torch.randn(2, 5, 4, 3).contiguous(memory_format=fmt)
    r = torch.randn(2, 5, 4, 3).contiguous(memory_format=fmt)
    nc = [torch.rand(2, 5) + 0.5, torch.randn(2, 5)]
    c = [torch.rand(5) + 0.5, torch.randn(5), torch.randn(5)]
    var = torch.rand(5) + 0.1
    return [
        ("bn_stats", (y,)),
        ("scale_shift_act", (y, *nc, r, c[0], c[1], True)),
        ("scale_shift_act", (y, *nc, None, None, None, False)),
        ("scale_shift_act_backward_reduce", (y, y, *nc, r, c[0], c[1], True, c[2], c[2])),
        ("scale_shift_act_backward_apply", (y, y, *nc, r, None, None, True, *nc, c[0], c[1], c[0], c[1], c[2],
                                            c[2])),
        ("bn_finalize", (c[1], var, c[0], c[2], 1e-5, 24, 2)),
        ("bn_finalize", (c[1], var, None, None, 1e-3, 24, 0)),
        ("bn_backward_finalize", (nc[1], nc[0], c[0], c[1], 24, 2, True)),
        ("bn_backward_finalize", (c[1], nc[0], c[0], None, 24, 0, False)),
    ]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_opcheck_primitives(op_backend, fmt):
    for name, args in primitive_samples(fmt):
        torch.library.opcheck(getattr(torch.ops.resnet_fast, name).default, args)


def _block(x, w, bn1, bn2, bn3, training):
    """conv-bn-relu, bn-relu-conv, then a bottleneck-style tail: what a ResNet block does with these ops."""
    h = ops.conv_bn_relu(x, w, *bn1, padding=1, training=training)
    h = ops.bn_relu_conv(h, *bn2, torch.cat([w, w], 1), padding=1, training=training)
    return ops.bn_add_relu(h, *bn3, h.detach() * 0.5, training=training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph(op_backend, training):
    torch._dynamo.reset()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    bns = [_bn(8), _bn(8), _bn(8)]
    bns_eager = [[t.clone() for t in bn] for bn in bns]
    compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, *bns, training)
    expected = _block(x, w, *bns_eager, training)
    torch.testing.assert_close(out, expected)
    for got, want in zip(sum(bns, []), sum(bns_eager, [])):  # running statistics mutated alike
        torch.testing.assert_close(got, want)
    (gx, gw), (ex, ew) = torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(expected.sum(), (x, w))
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)


def test_compile_inductor_squeeze_excite(op_backend):
    """The default (Inductor) backend, through an SE tail with an identity BN."""
    torch._dynamo.reset()
    y = torch.randn(2, 8, 4, 4)
    bn, id_bn = _bn(8), _bn(8)
    se = [torch.randn(2, 8, 1, 1), torch.randn(2), torch.randn(8, 2, 1, 1), torch.randn(8)]

    def tail(y, bn, id_bn):
        return ops.squeeze_excite(y, *bn, *se, y * 2, training=True, identity_bn=id_bn)

    expected = tail(y, [t.clone() for t in bn], [t.clone() for t in id_bn])
    torch.testing.assert_close(torch.compile(tail, fullgraph=True)(y, bn, id_bn), expected)


def _bottleneck_low_memory():
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, low_memory=True)


@pytest.mark.parametrize("build", [lambda: resnet_fast.resnet18(num_classes=5), _bottleneck_low_memory],
                         ids=["resnet18", "bottleneck_low_memory"])
def test_compile_fullgraph_whole_model(op_backend, build):
    """A fused model is one graph under torch.compile, and computes what it computes eagerly."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build().train()
    eager_model = build().train()
    eager_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    expected = eager_model(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(model.conv1.weight.grad, eager_model.conv1.weight.grad)
    torch.testing.assert_close(model.layer4[-1].bn2.running_var, eager_model.layer4[-1].bn2.running_var)


def test_export_eval_model(op_backend):
    """torch.export of an eval model (the ops' Functions and primitives trace; BN folded under no_grad)."""
    torch.manual_seed(0)
    model = resnet_fast.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected, rtol=1e-5, atol=1e-5)
