"""Gradients of gradients (create_graph=True) through every fused op.

The ops' backward kernels are not differentiable; with create_graph=True the backward
recomputes the output with eager operations (resnet_fast/ops/_double_backward.py). Before
that path existed, a gradient penalty through these ops silently lost every second-order
term. Checked in float64: gradgradcheck (the double backward against finite differences of
the backward), and first-order plus penalty gradients against the eager reference, for
every op and for small whole models against torchvision / timm.
"""
from __future__ import annotations

import pytest
import torch
import torchvision.models.resnet as tv_resnet

from model_utils import build_pair, make_input, rel_err
from resnet_fast import ops
from resnet_fast.models import ResNet, blocks
from resnet_fast.ops import reference
from test_se_preact import tiny_pair

D = torch.float64
N, C, H = 2, 3, 3


def _t(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D)


def _cases():
    """(name, fn(ops_module, *tensors, training=...), tensors): ops.<op> or reference.<op>."""
    weight, bias = _t(C, seed=1).abs() + 0.5, _t(C, seed=2)
    id_weight, id_bias = _t(C, seed=3).abs() + 0.5, _t(C, seed=4)
    x, identity, residual = _t(N, C, H, H, seed=5), _t(N, C, H, H, seed=6), _t(N, C, H, H, seed=7)
    conv_x, conv_w, conv_after = _t(N, 2, H, H, seed=8), _t(C, 2, 3, 3, seed=9), _t(4, C, 3, 3, seed=10)
    se = (_t(2, C, seed=11), _t(2, seed=12), _t(C, 2, seed=13), _t(C, seed=14))

    def stats():  # fresh running statistics per call: training updates them in place
        return torch.zeros(C, dtype=D) + 0.1, torch.ones(C, dtype=D) * 1.5

    return [
        ("bn_relu", lambda m, x, w, b, *, training: m.bn_relu(x, w, b, *stats(), training=training),
         (x, weight, bias)),
        ("bn_add_relu", lambda m, x, w, b, i, *, training: m.bn_add_relu(x, w, b, *stats(), i, training=training),
         (x, weight, bias, identity)),
        ("bn_add_relu identity_bn",
         lambda m, x, w, b, i, iw, ib, *, training: m.bn_add_relu(x, w, b, *stats(), i, training=training,
                                                                  identity_bn=(iw, ib, *stats())),
         (x, weight, bias, identity, id_weight, id_bias)),
        ("squeeze_excite",
         lambda m, x, w, b, i, f1, f1b, f2, f2b, *, training: m.squeeze_excite(x, w, b, *stats(), f1, f1b, f2, f2b,
                                                                                 i, training=training),
         (x, weight, bias, identity) + se),
        ("conv_bn_relu",
         lambda m, x, cw, w, b, *, training: m.conv_bn_relu(x, cw, w, b, *stats(), padding=1, training=training),
         (conv_x, conv_w, weight, bias)),
        ("conv_bn_relu residual",
         lambda m, x, cw, w, b, r, *, training: m.conv_bn_relu(x, cw, w, b, *stats(), padding=1, training=training,
                                                               residual=r),
         (conv_x, conv_w, weight, bias, residual)),
        ("conv_bn_relu residual recompute_conv",
         lambda m, x, cw, w, b, r, *, training: (
             m.conv_bn_relu(x, cw, w, b, *stats(), padding=1, training=training, residual=r, recompute_conv=True)
             if m is ops else m.conv_bn_relu(x, cw, w, b, *stats(), padding=1, training=training, residual=r)),
         (conv_x, conv_w, weight, bias, residual)),
        ("bn_relu_conv",
         lambda m, x, w, b, k, *, training: m.bn_relu_conv(x, w, b, *stats(), k, padding=1, training=training),
         (x, weight, bias, conv_after)),
    ]


CASES = {name: (fn, tensors) for name, fn, tensors in _cases()}


def _gradgradcheck(case, training):
    fn, tensors = CASES[case]
    inputs = [t.clone().requires_grad_() for t in tensors]
    assert torch.autograd.gradgradcheck(lambda *a: fn(ops, *a, training=training), inputs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck(op_backend, case, training):
    _gradgradcheck(case, training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_gradient_penalty_matches_eager(op_backend, case, training):
    _assert_penalty_matches_eager(*CASES[case], training)


def _assert_penalty_matches_eager(fn, tensors, training):
    """The first-order gradients taken with create_graph and the gradients of a penalty on
    all of them (sum of their squares), fused against eager."""
    def gradients(module):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(module, *inputs, training=training)
        first = torch.autograd.grad((out * _t(*out.shape, seed=20)).sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), inputs, allow_unused=True)
        return [g.detach() for g in first] + list(second)

    for t, fused, eager in zip(tensors + tensors, gradients(ops), gradients(reference)):
        # None: not in the graph of the penalty, as good as zeros (eager's ReLU backward reads
        # its output, which depends on every input, so eager returns zeros where fused says None).
        zeros = torch.zeros_like(t)
        torch.testing.assert_close(zeros if fused is None else fused, zeros if eager is None else eager,
                                   rtol=1e-9, atol=1e-10)


def test_inputs_computed_from_one_another(op_backend):
    """A backward returns partial derivatives: with y computed from identity (as in every
    residual block), d/d identity must not also count the path through y."""
    fn, tensors = CASES["bn_add_relu identity_bn"]
    _assert_penalty_matches_eager(
        lambda m, x, w, b, i, iw, ib, *, training: fn(m, x + 0.5 * i, w, b, i, iw, ib, training=training),
        tensors, training=True)


def tiny_models(kind):
    """(ours, torchvision's / timm's), one block per stage, the same float64 state."""
    if kind in ("basic", "bottleneck", "bottleneck low_memory"):
        block = "BasicBlock" if kind == "basic" else "Bottleneck"
        ours, ref = build_pair(lambda: ResNet(getattr(blocks, block), [1, 1, 1, 1], num_classes=5),
                               lambda: tv_resnet.ResNet(getattr(tv_resnet, block), [1, 1, 1, 1], num_classes=5))
        if kind.endswith("low_memory"):
            ours.set_low_memory()
        return ours, ref
    return tiny_pair(kind)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "bottleneck low_memory", "se-bottleneck",
                                  "preact-bottleneck"])
def test_model_gradient_penalty_matches_eager(op_backend, kind):
    """An input-gradient penalty (WGAN-GP / R1 style) through a whole model, against the eager model."""
    models, results = tiny_models(kind), []
    for model in models:
        model.train()
        x = make_input().requires_grad_()
        (grad_x,) = torch.autograd.grad(model(x).pow(2).sum(), x, create_graph=True)
        grads = torch.autograd.grad(grad_x.pow(2).sum(), list(model.parameters()), allow_unused=True)
        results.append((grad_x.detach(), grads))
    (ours_x, ours_grads), (ref_x, ref_grads) = results
    assert rel_err(ours_x, ref_x) < 1e-10
    for param, fused, eager in zip(models[1].parameters(), ours_grads, ref_grads):
        zeros = torch.zeros_like(param)
        assert rel_err(zeros if fused is None else fused, zeros if eager is None else eager) < 1e-9


def test_first_order_values_unchanged_by_create_graph(op_backend):
    """With create_graph the first-order gradients come from the eager recomputation: the same
    values as the kernels' (float64: up to summation order)."""
    fn, tensors = CASES["bn_add_relu identity_bn"]
    grads = []
    for create_graph in (False, True):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(ops, *inputs, training=True)
        grads.append(torch.autograd.grad(out, inputs, _t(*out.shape, seed=21), create_graph=create_graph))
    for plain, graph in zip(*grads):
        torch.testing.assert_close(graph, plain, rtol=1e-10, atol=1e-12)


def test_synchronized_statistics_refuse_create_graph(tmp_path):
    """SyncBN's backward all-reduces; its recomputation is not differentiable here: a clear error."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        fn, tensors = CASES["bn_relu"]
        x, w, b = [t.clone().requires_grad_() for t in tensors]
        out = ops.bn_relu(x, w, b, None, None, training=True, group_name=dist.group.WORLD.group_name)
        torch.autograd.grad(out.sum(), x)  # first order: fine
        out = ops.bn_relu(x, w, b, None, None, training=True, group_name=dist.group.WORLD.group_name)
        with pytest.raises(NotImplementedError, match="create_graph=True"):
            torch.autograd.grad(out.sum(), x, create_graph=True)
    finally:
        dist.destroy_process_group()
