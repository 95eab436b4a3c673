"""conv_bn_relu against eager conv2d + batch_norm + relu: outputs, every gradient, running stats."""
import itertools

import pytest
import torch

from op_testing import DTYPES, FORMATS, Names, compare, conv_bn_names, conv_master_inputs, saved_bytes
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


def residual_inputs(case, seed=0):
    """Master inputs with a ``residual`` of the conv output's shape (the block-tail form)."""
    master, conv = master_inputs(case, seed=seed)
    out_shape = torch.nn.functional.conv2d(master["x"], master["weight"], None, **conv).shape
    master["residual"] = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed + 1),
                                     dtype=torch.float64)
    return master, conv


def call_residual(fn, conv, training, relu=True, **options):
    return lambda x, weight, bn_weight, bn_bias, running_mean, running_var, num_batches_tracked, residual: fn(
        x, weight, bn_weight, bn_bias, running_mean, running_var, training=training, relu=relu,
        num_batches_tracked=num_batches_tracked, residual=residual, **conv, **options)


RESIDUAL_NAMES = Names(NAMES.differentiable | {"residual"}, NAMES.activations | {"residual"}, NAMES.buffers,
                       NAMES.param_dtype_fixed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["train", "eval", "inference"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("case", ["stage", "pointwise_130", "grouped_dilated"])
def test_residual_matches_eager(op_backend, case, fmt, mode, dtype):
    """relu(bn(conv(x)) + residual): every gradient including the residual's in train/eval; the
    folded inference path (no gradients: BN in the conv, bias + add + ReLU as its epilogue)."""
    master, conv = residual_inputs(CASES[case])
    names = RESIDUAL_NAMES if mode != "inference" else Names((), RESIDUAL_NAMES.activations, NAMES.buffers,
                                                             NAMES.param_dtype_fixed)
    compare(call_residual(ops.conv_bn_relu, conv, mode == "train"),
            call_residual(reference.conv_bn_relu, conv, mode == "train"), master, names, dtype, fmt)


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_residual_without_relu(op_backend, mode):
    master, conv = residual_inputs(CASES["stage"])
    names = RESIDUAL_NAMES if mode == "train" else Names((), RESIDUAL_NAMES.activations, NAMES.buffers,
                                                         NAMES.param_dtype_fixed)
    compare(call_residual(ops.conv_bn_relu, conv, mode == "train", relu=False),
            call_residual(reference.conv_bn_relu, conv, mode == "train", relu=False), master, names, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("case", ["stage", "stem_odd", "pointwise_130"])
def test_recompute_conv_matches_eager(op_backend, case, fmt, training, dtype):
    """recompute_conv=True (conv rerun in backward, ReLU mask from the output): every gradient, with
    and without a residual, as eager's within the same criterion as the default path."""
    master, conv = residual_inputs(CASES[case])
    compare(call_residual(ops.conv_bn_relu, conv, training, recompute_conv=True),
            call_residual(reference.conv_bn_relu, conv, training), master, RESIDUAL_NAMES, dtype, fmt)
    del master["residual"]
    compare(call(lambda *a, **k: ops.conv_bn_relu(*a, recompute_conv=True, **k), conv, training),
            call(reference.conv_bn_relu, conv, training), master, NAMES, dtype, fmt)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no_relu"])
def test_recompute_conv_gives_the_same_gradients(op_backend, relu):
    """The recomputed convolution is the forward's: gradients equal the default path's."""
    master, conv = residual_inputs(CASES["stage"])
    args = {k: v.float().requires_grad_(k in RESIDUAL_NAMES.differentiable) for k, v in master.items()
            if k != "num_batches_tracked"}
    grads = []
    for recompute in (False, True):
        out = ops.conv_bn_relu(args["x"], args["weight"], args["bn_weight"], args["bn_bias"], None, None,
                               training=True, relu=relu, residual=args["residual"], recompute_conv=recompute, **conv)
        grads.append(torch.autograd.grad(out, [args[k] for k in ("x", "weight", "bn_weight", "bn_bias", "residual")],
                                         torch.randn_like(out, generator=torch.Generator().manual_seed(3))))
    for default, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, default, rtol=1e-6, atol=1e-6)


def test_recompute_conv_under_autocast(op_backend):
    """Under bf16 autocast the rerun convolution is the forward's (bf16 input and weight): output
    and every gradient (fp32 leaves) equal the default path's."""
    master, conv = residual_inputs(CASES["stage"])
    results = []
    for recompute in (False, True):
        args = {k: master[k].float().requires_grad_() for k in ("x", "weight", "bn_weight", "bn_bias", "residual")}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ops.conv_bn_relu(args["x"], args["weight"], args["bn_weight"], args["bn_bias"], None, None,
                                   training=True, residual=args["residual"], recompute_conv=recompute, **conv)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        results.append([out.detach()] + [args[k].grad for k in args])
    for default, recomputed in zip(*results):
        assert recomputed.dtype == default.dtype
        torch.testing.assert_close(recomputed, default)


def test_recompute_conv_keeps_input_and_output_only(op_backend):
    """Saved for backward: x and the output (which the next layer keeps anyway), not the
    convolution output; without recompute_conv x, y and the residual."""
    master, conv = residual_inputs(CASES["pointwise_130"])
    args = {k: v.float().requires_grad_() for k, v in master.items() if k != "num_batches_tracked"}
    outputs = []

    def saved(recompute):
        def call():
            outputs.append(ops.conv_bn_relu(args["x"], args["weight"], args["bn_weight"], args["bn_bias"], None, None,
                                            training=True, residual=args["residual"], recompute_conv=recompute,
                                            **conv))
        return saved_bytes(call, exclude=(args["weight"], args["bn_weight"], args["bn_bias"]),
                           keep=lambda t: t.dim() == 4)  # activations, not per-channel or per-(n, c) vectors

    x_bytes, out_bytes = args["x"].numel() * 4, args["residual"].numel() * 4
    assert saved(True) == x_bytes + out_bytes
    assert saved(False) == x_bytes + 2 * out_bytes  # x, y, residual


def test_residual_in_the_other_memory_format(op_backend):
    """A residual in a layout other than the output's is read correctly (copied to the output's)."""
    master, conv = residual_inputs(CASES["stage"])
    args = [master[k].float() for k in ("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var")]
    x = args[0].contiguous(memory_format=torch.channels_last)
    residual = master["residual"].float()
    expected = reference.conv_bn_relu(x, *args[1:], training=False, residual=residual, **conv)
    with torch.no_grad():
        out = ops.conv_bn_relu(x, *args[1:], training=False, residual=residual, **conv)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_batch_of_one_in_eval(op_backend):
    master, conv = master_inputs(((1, 8, 7, 7), 16, 3, 1, 1, 1, 1))
    compare(call(ops.conv_bn_relu, conv, False), call(reference.conv_bn_relu, conv, False), master, NAMES,
            torch.float32)


def test_gradcheck(op_backend):
    master, conv = residual_inputs(((2, 3, 4, 3), 4, 3, 1, 1, 1, 1))
    rm, rv = master["running_mean"].clone(), master["running_var"].clone()
    for names in (("x", "weight", "bn_weight", "bn_bias"), ("x", "weight", "bn_weight", "bn_bias", "residual")):
        inputs = [master[k].clone().requires_grad_() for k in names]
        for training, recompute in itertools.product((True, False), (False, True)):
            assert torch.autograd.gradcheck(
                lambda x, w, g, b, r=None: ops.conv_bn_relu(x, w, g, b, rm, rv, training=training, momentum=0.0,
                                                            residual=r, recompute_conv=recompute, **conv), inputs)


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
    with pytest.raises(RuntimeError, match="residual has shape"):
        ops.conv_bn_relu(x, w, *bn, training=False, residual=x, **conv)
    out_like = ops.conv_bn_relu(x, w, *bn, training=False, **conv).detach()
    with pytest.raises(RuntimeError, match="residual is torch.float16"):
        ops.conv_bn_relu(x, w, *bn, training=False, residual=out_like.half(), **conv)
    one = torch.randn(1, 16, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ops.conv_bn_relu(one, w[:, :, :1, :1].contiguous(), *bn, training=True)
