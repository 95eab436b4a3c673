"""Gradients of gradients (create_graph=True) through every fused op.

The ops' backward kernels are not differentiable; with create_graph=True the backward
recomputes the output with eager operations (resnet_fast/ops/_double_backward.py). Before
that path existed, a gradient penalty through these ops silently lost every second-order
term. Checked two ways, in float64: gradgradcheck (the double backward against finite
differences of the backward) and a gradient penalty against the eager reference.
"""
from __future__ import annotations

import pytest
import torch

from resnet_fast import ops
from resnet_fast.ops import _direct_call, reference

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


@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck_through_dispatcher(case):
    """The registered op's autograd (what torch.compile and tensor subclasses get) runs the
    same backward: the same double backward."""
    with _direct_call.through_dispatcher():
        _gradgradcheck(case, training=True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_gradient_penalty_matches_eager(op_backend, case, training):
    """d/d inputs of ||d sum(out * probe) / d x||^2 (a gradient penalty), fused against eager."""
    fn, tensors = CASES[case]

    def penalty_grads(module):
        inputs = [t.clone().requires_grad_() for t in tensors]
        out = fn(module, *inputs, training=training)
        probe = _t(*out.shape, seed=20)
        (grad_x,) = torch.autograd.grad((out * probe).sum(), inputs[0], create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), inputs, allow_unused=True)

    for t, fused, eager in zip(tensors, penalty_grads(ops), penalty_grads(reference)):
        # None: not in the graph of the penalty, as good as zeros (eager's ReLU backward reads
        # its output, which depends on every input, so eager returns zeros where fused says None).
        zeros = torch.zeros_like(t)
        torch.testing.assert_close(zeros if fused is None else fused, zeros if eager is None else eager,
                                   rtol=1e-9, atol=1e-10)


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
