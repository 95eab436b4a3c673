"""bn_relu_conv against eager batch_norm + relu + conv2d: outputs, every gradient, running stats,
and what it saves for backward (y, not the convolution's input)."""
import pytest
import torch

from op_testing import DTYPES, FORMATS, compare, conv_bn_names, conv_master_inputs, saved_bytes
from resnet_fast import ops
from resnet_fast.ops import reference

# (y shape, out channels, kernel, stride, padding, dilation, groups): a bottleneck's 3x3 and
# 1x1-expand convolutions plus odd ones (C=3, C_out 63/130, H != W, 7x7 maps, grouped + dilated).
CASES = {
    "stage_3x3_stride2": ((2, 16, 8, 8), 16, 3, 2, 1, 1, 1),
    "odd": ((2, 3, 9, 7), 63, 3, 1, 1, 1, 1),
    "expand_130": ((2, 16, 7, 7), 130, 1, 1, 0, 1, 1),
    "grouped_dilated": ((2, 8, 7, 6), 16, 3, 1, 2, 2, 4),
}
NAMES = conv_bn_names("y")


def master_inputs(case, seed=0, **bn_kwargs):
    return conv_master_inputs(case, "y", bn_on_input=True, seed=seed, scale=2.0, shift=0.5, **bn_kwargs)


def call(fn, conv, training, momentum=0.1):
    return lambda y, weight, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked: fn(
        y, bn_weight, bn_bias, running_mean, running_var, weight, training=training, momentum=momentum,
        num_batches_tracked=num_batches_tracked, **conv)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_eager(op_backend, case, fmt, training, dtype):
    master, conv = master_inputs(case)
    compare(call(ops.bn_relu_conv, conv, training), call(reference.bn_relu_conv, conv, training), master, NAMES,
            dtype, fmt)


@pytest.mark.parametrize("bn_kwargs", [{"affine": False}, {"track_running_stats": False}],
                         ids=["no_affine", "no_running_stats"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_variants(op_backend, bn_kwargs, momentum, training):
    master, conv = master_inputs(CASES["odd"], **bn_kwargs)
    compare(call(ops.bn_relu_conv, conv, training, momentum), call(reference.bn_relu_conv, conv, training, momentum),
            master, NAMES, torch.float64)


def test_batch_of_one_in_eval(op_backend):
    master, conv = master_inputs(((1, 8, 7, 7), 16, 3, 1, 1, 1, 1))
    compare(call(ops.bn_relu_conv, conv, False), call(reference.bn_relu_conv, conv, False), master, NAMES,
            torch.float32)


def test_gradcheck(op_backend):
    master, conv = master_inputs(((2, 3, 4, 3), 4, 3, 1, 1, 1, 1))
    for training in (True, False):
        inputs = [master[k].clone().requires_grad_() for k in ("y", "weight", "bn_weight", "bn_bias")]
        rm, rv = master["running_mean"].clone(), master["running_var"].clone()
        assert torch.autograd.gradcheck(
            lambda y, w, g, b: ops.bn_relu_conv(y, g, b, rm, rv, w, training=training, momentum=0.0, **conv), inputs)


def test_saves_y_not_the_convolution_input(op_backend):
    """Saved for backward: y and per-channel vectors; eager also keeps relu(bn(y)), as large as y."""
    master, conv = master_inputs(CASES["stage_3x3_stride2"])
    args = {k: v.float() for k, v in master.items() if k != "num_batches_tracked"}
    y = args["y"].requires_grad_()

    def saved_activation_bytes(fn):  # activations, not the conv weight or per-channel vectors
        def call():
            fn(y, args["bn_weight"], args["bn_bias"], args["running_mean"].clone(), args["running_var"].clone(),
               args["weight"], training=True, **conv)

        return saved_bytes(call, exclude=(args["weight"], args["bn_weight"], args["bn_bias"]),
                           keep=lambda t: t.dim() == 4)  # activations, not per-channel or per-(n, c) vectors

    assert saved_activation_bytes(ops.bn_relu_conv) == y.numel() * 4
    assert saved_activation_bytes(reference.bn_relu_conv) >= 2 * y.numel() * 4


def test_autocast_runs_the_convolution_in_the_autocast_dtype(op_backend):
    master, conv = master_inputs(CASES["stage_3x3_stride2"])
    y = master["y"].float().requires_grad_()
    bn = [master[k].float() for k in ("bn_weight", "bn_bias", "running_mean", "running_var")]
    weight = master["weight"].float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.bn_relu_conv(y, *bn, weight, training=True, **conv)
        expected = reference.bn_relu_conv(y, *[t.clone() for t in bn], weight, training=True, **conv)
    assert out.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert y.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_bad_inputs_name_the_argument(op_backend):
    master, conv = master_inputs(CASES["stage_3x3_stride2"])
    y, w = master["y"], master["weight"]
    bn = [master[k] for k in ("bn_weight", "bn_bias", "running_mean", "running_var")]
    with pytest.raises(RuntimeError, match="4-D"):
        ops.bn_relu_conv(y[0], *bn, w, training=True, **conv)
    with pytest.raises(RuntimeError, match="channels"):
        ops.bn_relu_conv(y, *bn, w[:, :3], training=True, **conv)
    with pytest.raises(RuntimeError, match="bn_weight"):
        ops.bn_relu_conv(y, bn[0][:3], *bn[1:], w, training=True, **conv)
    with pytest.raises(RuntimeError, match="dtype|float"):
        ops.bn_relu_conv(y.float(), *bn, w, training=True, **conv)
    running = [t.clone() for t in bn[2:]]
    one = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ops.bn_relu_conv(one, *bn[:2], *running, w, training=True)
    assert all(torch.equal(a, b) for a, b in zip(running, bn[2:])), "a refused call changed running stats"
