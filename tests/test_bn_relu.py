"""bn_relu (pre-activation) against eager batch_norm + relu."""
import pytest
import torch

from op_testing import DTYPES, FORMATS, SHAPES, Names, activation, bn_names, compare, with_bn
from resnet_fast import ops
from resnet_fast.ops import reference

PARAMS, BUFFERS, FIXED = bn_names()
NAMES = Names(("x",) + PARAMS, ("x",), BUFFERS, FIXED)


def call(fn, training, relu=True, momentum=0.1):
    return lambda x, weight, bias, running_mean, running_var, num_batches_tracked: fn(
        x, weight, bias, running_mean, running_var, training=training, momentum=momentum, relu=relu,
        num_batches_tracked=num_batches_tracked)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_eager(op_backend, shape, fmt, training, dtype):
    master = with_bn({"x": activation(shape, 0)}, shape[1], seed=1)
    compare(call(ops.bn_relu, training), call(reference.bn_relu, training), master, NAMES, dtype, fmt)


@pytest.mark.parametrize("bn_kwargs", [{"affine": False}, {"track_running_stats": False}],
                         ids=["no_affine", "no_running_stats"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_variants(op_backend, bn_kwargs, momentum, training):
    master = with_bn({"x": activation((3, 5, 4, 4), 0)}, 5, seed=1, **bn_kwargs)
    compare(call(ops.bn_relu, training, relu=False, momentum=momentum),
            call(reference.bn_relu, training, relu=False, momentum=momentum), master, NAMES, torch.float64)


def test_statistics_stay_accurate_for_large_means(op_backend):
    """|mean| = 1e5 std: a naive fp32 sum of squares would lose the variance entirely.

    The batch statistics (seen through the running statistics, momentum 1) must be as
    accurate as float32 allows: mean to ~eps * |mean|, variance to a few eps relative.
    """
    x64 = activation((4, 8, 16, 16), 0, scale=1e-2, shift=1e3)
    x = x64.float()
    rm, rv = torch.zeros(8), torch.ones(8)
    ops.bn_relu(x, None, None, rm, rv, training=True, momentum=1.0)
    truth_var, truth_mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=1)
    eps32 = torch.finfo(torch.float32).eps
    assert (rm.double() - truth_mean).abs().max() <= 4 * eps32 * 1e3
    assert ((rv.double() - truth_var) / truth_var).abs().max() <= 1e-4, "variance lost to cancellation"


def test_gradcheck(op_backend):
    master = with_bn({"x": activation((2, 3, 3, 4), 0)}, 3, seed=1)
    for training in (True, False):
        inputs = [master[k].clone().requires_grad_() for k in ("x", "weight", "bias")]
        rm, rv = master["running_mean"].clone(), master["running_var"].clone()
        assert torch.autograd.gradcheck(
            lambda x, w, b: ops.bn_relu(x, w, b, rm, rv, training=training, momentum=0.0), inputs)


def test_bad_inputs(op_backend):
    x = torch.randn(2, 4, 3, 3)
    w, b, rm, rv = torch.ones(4), torch.zeros(4), torch.zeros(4), torch.ones(4)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.bn_relu(x[0], w, b, rm, rv, training=True)
    with pytest.raises(RuntimeError, match="weight"):
        ops.bn_relu(x, w[:3], b, rm, rv, training=True)
    with pytest.raises(RuntimeError, match="running_mean"):
        ops.bn_relu(x, w, b, rm, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ops.bn_relu(x[:1, :, :1, :1], w, b, rm, rv, training=True)
    assert torch.equal(rm, torch.zeros(4)) and torch.equal(rv, torch.ones(4)), "a refused call changed running stats"
