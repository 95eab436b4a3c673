"""How many operations besides the kernel primitives a fused op dispatches (the GPU host cost).

On a GPU every dispatched operation that computes something is a kernel launch. The fused
ops keep the per-channel BatchNorm algebra inside the primitives' finalize steps, so a
BatchNorm(+residual BN)+ReLU layer costs its primitives plus a handful of operations (the
running-statistics update, the residual's constant coefficients). Counted with a
TorchDispatchMode on the compiled CPU backend, whose route through ops/_bn.py is the one
the CUDA and Triton backends take (the primitives are opaque custom ops there too);
allocations, views and metadata operations launch nothing and are left out.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from op_testing import bn_state, selected_backend
from resnet_fast import backend, ops
from resnet_fast.ops import primitives

pytestmark = pytest.mark.skipif(not backend.backend_status()["cpu"][0], reason="needs the compiled CPU kernels")

# Operations that launch no kernel: allocation, views, metadata.
_NO_LAUNCH = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "view", "_unsafe_view",
              "reshape", "t", "transpose", "permute", "expand", "unsqueeze", "squeeze", "select", "slice", "detach",
              "alias", "as_strided", "_to_copy_noop", "lift_fresh", "split", "split_with_sizes", "unbind"}
_PRIMITIVES = set(primitives.PRIMITIVES)


class CountLaunches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.primitives = collections.Counter()
        self.others = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace == "resnet_fast" and name in _PRIMITIVES:
            self.primitives[name] += 1
        elif name not in _NO_LAUNCH:
            self.others[name] += 1
        return func(*args, **(kwargs or {}))


def _bn(c, seed):
    s = bn_state(c, seed=seed)
    return [s[k].float() for k in ("weight", "bias", "running_mean", "running_var")], s["num_batches_tracked"]


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _cases():
    y = torch.randn(4, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    identity = torch.randn_like(y)
    (w, b, rm, rv), nbt = _bn(16, 0)
    (iw, ib, irm, irv), inbt = _bn(16, 1)
    se = [torch.randn(4, 16, 1, 1), torch.randn(4), torch.randn(16, 4, 1, 1), torch.randn(16)]

    def bn_relu():
        return (_leaf(y), _leaf(w), _leaf(b)), lambda x, w_, b_: ops.bn_relu(
            x, w_, b_, rm, rv, training=True, num_batches_tracked=nbt)

    def bn_add_relu():
        return (_leaf(y), _leaf(w), _leaf(b), _leaf(identity)), lambda x, w_, b_, i: ops.bn_add_relu(
            x, w_, b_, rm, rv, i, training=True, num_batches_tracked=nbt)

    def bn_add_relu_downsample():
        return (_leaf(y), _leaf(w), _leaf(b), _leaf(identity), _leaf(iw), _leaf(ib)), (
            lambda x, w_, b_, i, iw_, ib_: ops.bn_add_relu(x, w_, b_, rm, rv, i, training=True,
                                                           num_batches_tracked=nbt,
                                                           identity_bn=(iw_, ib_, irm, irv, inbt)))

    def squeeze_excite():
        return ((_leaf(y), _leaf(w), _leaf(b), _leaf(identity)) + tuple(_leaf(t) for t in se)), (
            lambda x, w_, b_, i, f1w, f1b, f2w, f2b: ops.squeeze_excite(
                x, w_, b_, rm, rv, f1w, f1b, f2w, f2b, i, training=True, num_batches_tracked=nbt))

    return {"bn_relu": (bn_relu, 8), "bn_add_relu": (bn_add_relu, 8),
            "bn_add_relu_downsample": (bn_add_relu_downsample, 8), "squeeze_excite": (squeeze_excite, 30)}


def count(build):
    inputs, fn = build()
    grad_out = torch.randn(4, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    with CountLaunches() as mode:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, grad_out)
    return mode


@pytest.mark.parametrize("name", list(_cases()))
def test_forward_backward_dispatch_count(name):
    build, limit = _cases()[name]
    with selected_backend("cpu"):
        mode = count(build)
    others = sum(mode.others.values())
    print(f"{name}: {others} operations besides {sum(mode.primitives.values())} primitive calls: "
          f"{dict(mode.others)}; primitives {dict(mode.primitives)}")
    assert others <= limit, f"{name}: {others} operations besides the primitives (at most {limit}): {dict(mode.others)}"
    # Two finalize steps per BatchNorm and direction at most: the algebra is inside them.
    assert mode.primitives["bn_stats"] >= 1 and mode.primitives["bn_finalize"] >= 1
    assert mode.primitives["scale_shift_act_backward_reduce"] == 1


def test_counts_reach_the_primitives():
    """The mode sees the primitives (a count of 0 others is not from a mode that saw nothing)."""
    with selected_backend("cpu"):
        mode = count(_cases()["bn_relu"][0])
    assert set(mode.primitives) == _PRIMITIVES


def test_bn_add_relu_takes_the_producers_statistics():
    """``batch_stats`` (what the fused convolution chain's epilogue computes) replaces the op's pass over y
    for them: no bn_stats call, the same output, gradients and running statistics as without."""
    y = torch.randn(4, 16, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    identity, grad_out = torch.randn_like(y), torch.randn_like(y)
    var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
    results = []
    for stats in (None, (mean, var)):
        (w, b, rm, rv), nbt = _bn(16, 0)
        w, b, rm, rv = (t.double() for t in (w, b, rm, rv))
        inputs = (_leaf(y), _leaf(w), _leaf(b), _leaf(identity))
        with selected_backend("cpu"), CountLaunches() as mode:
            out = ops.bn_add_relu(*inputs[:3], rm, rv, inputs[3], training=True, num_batches_tracked=nbt,
                                  batch_stats=stats)
            grads = torch.autograd.grad(out, inputs, grad_out)
        assert mode.primitives["bn_stats"] == (1 if stats is None else 0)
        results.append((out, *grads, rm, rv, nbt))
    for without, with_stats in zip(*results):
        torch.testing.assert_close(with_stats, without)
    with pytest.raises(RuntimeError, match="batch_stats mean must be"):
        ops.bn_add_relu(y, None, None, None, None, identity, training=True, batch_stats=(mean.float(), var.float()))
