"""Every fused op and primitive: torch.library.opcheck, and torch.compile(fullgraph=True) tracing."""
import itertools

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


def _leaf(t):
    return t.detach().clone().requires_grad_()


def op_samples(fmt):
    """(op name, args) samples covering train/eval, identity BN, SE, both layouts."""
    x = torch.randn(2, 4, 6, 5).contiguous(memory_format=fmt)
    y = torch.randn(2, 8, 6, 5).contiguous(memory_format=fmt)
    w = torch.randn(8, 4, 3, 3)
    w2 = torch.randn(6, 4, 3, 1)  # groups=2 over y's 8 channels
    se = [torch.randn(2, 8, 1, 1), torch.randn(2), torch.randn(8, 2, 1, 1), torch.randn(8)]
    samples = []
    for use_batch_stats in (True, False):
        bn, id_bn = _bn(8), _bn(8)
        for residual, recompute in itertools.product((None, _leaf(y * 0.5)), (False, True)):
            # (conv_bn_relu's output has y's shape; recompute_conv reruns the conv in backward)
            samples.append(("conv_bn_relu", (_leaf(x), _leaf(w), _leaf(bn[0]), _leaf(bn[1]), bn[2], bn[3], residual,
                                             [1, 1], [1, 1], [1, 1], 1, use_batch_stats, False, 1e-5, True,
                                             recompute, "")))
        samples.append(("bn_relu", (_leaf(y), _leaf(bn[0]), _leaf(bn[1]), bn[2], bn[3], use_batch_stats, 1e-5,
                                    True, "")))
        samples.append(("bn_relu_conv", (_leaf(y), _leaf(bn[0]), _leaf(bn[1]), bn[2], bn[3], _leaf(w2), [2, 1],
                                         [1, 0], [1, 1], 2, use_batch_stats, 1e-5, "")))
        tail = (_leaf(y), _leaf(bn[0]), _leaf(bn[1]), bn[2], bn[3], _leaf(y * 0.5), True, _leaf(id_bn[0]),
                _leaf(id_bn[1]), id_bn[2], id_bn[3])
        samples.append(("bn_add_relu", tail + (use_batch_stats, 1e-5, True, "")))
        samples.append(("squeeze_excite", tail + tuple(_leaf(t) for t in se) + (use_batch_stats, 1e-5, True, "")))
    bn = _bn(8)
    for residual in (None, y):  # the folded inference path (no gradients)
        samples.append(("conv_bn_relu", (x, w, bn[0], bn[1], bn[2], bn[3], residual, [1, 1], [1, 1], [1, 1], 1,
                                         False, True, 1e-5, True, False, "")))
    return samples


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_opcheck_fused_ops(op_backend, fmt):
    for name, args in op_samples(fmt):
        torch.library.opcheck(getattr(torch.ops.resnet_fast, name).default, args)


def test_opcheck_primitives(op_backend):
    y = torch.randn(2, 5, 4, 3)
    r = torch.randn(2, 5, 4, 3)
    nc = [torch.rand(2, 5) + 0.5, torch.randn(2, 5)]
    c = [torch.rand(5) + 0.5, torch.randn(5), torch.randn(5)]
    torch.library.opcheck(torch.ops.resnet_fast.bn_stats.default, (y,))
    torch.library.opcheck(torch.ops.resnet_fast.scale_shift_act.default, (y, *nc, r, c[0], c[1], True))
    torch.library.opcheck(torch.ops.resnet_fast.scale_shift_act_backward_reduce.default,
                          (y, y, *nc, r, c[0], c[1], True, c[2], c[2]))
    torch.library.opcheck(torch.ops.resnet_fast.scale_shift_act_backward_apply.default,
                          (y, y, *nc, r, None, None, True, *nc, c[0], c[1], c[0], c[1], c[2], c[2]))
    torch.library.opcheck(torch.ops.resnet_fast.bn_finalize.default, (c[1], c[0], c[2], c[1], 1e-5, 24, 2))
    torch.library.opcheck(torch.ops.resnet_fast.bn_backward_finalize.default, (*nc, c[0], c[2], 24, 2, True))


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
