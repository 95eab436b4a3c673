"""conv_bn_relu against eager conv2d + batch_norm + relu: outputs, every gradient, running stats."""
import pytest
import torch

from op_testing import DTYPES, FORMATS, Names, compare, conv_bn_names, conv_master_inputs
from resnet_fast import ops
from resnet_fast.ops import reference

# (x shape, out channels, kernel, stride, padding, dilation, groups): ResNet-like stages plus odd
# ones (C=3 stem-like input, C_out 63/130, H != W, 7x7 maps, grouped + dilated).
CASES = {
    "stage": ((2, 16, 8, 8), 32, 3, 1, 1, 1, 1),
    "stem_odd": ((2, 3, 9, 7), 63, 3, 2, 1, 1, 1),
    "pointwise_130": ((2, 16, 7, 7), 130, 1, 1, 0, 1, 1),
    "grouped_dilated": ((2, 8, 7, 6), 16, 3, 1, 2, 2, 4),
}
NAMES = conv_bn_names("x")


def master_inputs(case, seed=0, **bn_kwargs):
    return conv_master_inputs(case, "x", bn_on_input=False, seed=seed, **bn_kwargs)


def call(fn, conv, training, relu=True, momentum=0.1):
    return lambda x, weight, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked: fn(
        x, weight, bn_weight, bn_bias, running_mean, running_var, training=training, relu=relu, momentum=momentum,
        num_batches_tracked=num_batches_tracked, **conv)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_eager(op_backend, case, fmt, training, dtype):
    master, conv = master_inputs(case)
    compare(call(ops.conv_bn_relu, conv, training), call(reference.conv_bn_relu, conv, training), master, NAMES,
            dtype, fmt)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_conv_bn_without_relu_and_cumulative_momentum(op_backend, training):
    master, conv = master_inputs(CASES["stage"])
    compare(call(ops.conv_bn_relu, conv, training, relu=False, momentum=None),
            call(reference.conv_bn_relu, conv, training, relu=False, momentum=None), master, NAMES, torch.float64)


@pytest.mark.parametrize("bn_kwargs", [{"affine": False}, {"track_running_stats": False}], ids=["no_affine",
                                                                                                  "no_running_stats"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_variants(op_backend, bn_kwargs, training):
    master, conv = master_inputs(CASES["stem_odd"], **bn_kwargs)
    compare(call(ops.conv_bn_relu, conv, training), call(reference.conv_bn_relu, conv, training), master, NAMES,
            torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_inference_folds_bn(op_backend, fmt, dtype):
    """Eval without gradients folds BN into the conv weights: same numbers as eager within the criterion."""
    master, conv = master_inputs(CASES["stage"])
    inference = Names((), NAMES.activations, NAMES.buffers, NAMES.param_dtype_fixed)
    compare(call(ops.conv_bn_relu, conv, False), call(reference.conv_bn_relu, conv, False), master, inference,
            dtype, fmt)


def test_batch_of_one_in_eval(op_backend):
    master, conv = master_inputs(((1, 8, 7, 7), 16, 3, 1, 1, 1, 1))
    compare(call(ops.conv_bn_relu, conv, False), call(reference.conv_bn_relu, conv, False), master, NAMES,
            torch.float32)


def test_gradcheck(op_backend):
    master, conv = master_inputs(((2, 3, 4, 3), 4, 3, 1, 1, 1, 1))
    for training in (True, False):
        inputs = [master[k].clone().requires_grad_() for k in ("x", "weight", "bn_weight", "bn_bias")]
        rm, rv = master["running_mean"].clone(), master["running_var"].clone()
        assert torch.autograd.gradcheck(
            lambda x, w, g, b: ops.conv_bn_relu(x, w, g, b, rm, rv, training=training, momentum=0.0, **conv),
            inputs)


def test_bad_inputs_name_the_argument(op_backend):
    master, conv = master_inputs(CASES["stage"])
    x, w = master["x"], master["weight"]
    bn = [master[k] for k in ("bn_weight", "bn_bias", "running_mean", "running_var")]
    with pytest.raises(RuntimeError, match="4-D"):
        ops.conv_bn_relu(x[0], w, *bn, training=True, **conv)
    with pytest.raises(RuntimeError, match="channels"):
        ops.conv_bn_relu(x[:, :3], w, *bn, training=True, **conv)
    with pytest.raises(RuntimeError, match="bn_weight"):
        ops.conv_bn_relu(x, w, bn[0][:3], *bn[1:], training=True, **conv)
    with pytest.raises(RuntimeError, match="dtype|float"):
        ops.conv_bn_relu(x.int(), w, *bn, training=True, **conv)
    one = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ops.conv_bn_relu(one, w[:, :, :1, :1].contiguous(), *bn, training=True)
