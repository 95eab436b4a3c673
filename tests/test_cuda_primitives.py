"""The CUDA kernels of the primitives (csrc/cuda) against their executable specification.

``torch.ops.resnet_fast.<prim>`` on CUDA tensors is compared with
``resnet_fast.ops.primitives.<prim>`` (plain torch on the same tensors), for odd and
ResNet shapes, both memory formats, the four dtypes and every valid combination of the
optional arguments; plus opcheck and run-to-run determinism.

Tolerances:
- scale_shift_act and scale_shift_act_backward_apply: exact. The kernels round each
  product and sum once, in the reference's order (no FMA contraction), and narrow with
  round-to-nearest-even like ``Tensor.to``; so they equal eager torch bit for bit.
- bn_stats and scale_shift_act_backward_reduce sum in another order than torch, so both
  are compared with a float64 evaluation of the same sums: the error may be at most
  ``64 * eps(acc) * sum|terms|`` (a sequential sum of m terms errs by about
  sqrt(m) * eps * sum|terms|; threads sum a few hundred terms, then a tree; a wrong index
  gives errors of order 1). The ReLU mask is
  taken from the acc-dtype pre-activation, as both implementations compute it.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import resnet_fast  # noqa: F401  (registers torch.ops.resnet_fast)
from resnet_fast import _extension
from resnet_fast.ops import primitives as P

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.gpu,
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FORMATS = [torch.contiguous_format, torch.channels_last]
# Odd shapes (tails, plane-crossing vectors, C not a multiple of the vector width, 1x1,
# tiny planes) and ResNet-50 stage shapes at a small batch.
ODD_SHAPES = [(2, 3, 5, 7), (3, 5, 1, 1), (2, 8, 7, 7), (1, 1, 1, 1), (2, 13, 9, 11), (3, 24, 14, 14), (1, 6, 33, 2)]
RESNET_SHAPES = [(2, 64, 112, 112), (4, 256, 56, 56), (4, 512, 28, 28), (4, 1024, 14, 14), (8, 2048, 7, 7)]
SHAPES = ODD_SHAPES + RESNET_SHAPES


def _ops():
    if not _extension.has_cuda_kernels():  # else torch.ops would run the reference itself
        pytest.skip("the extension was built without its CUDA kernels")
    return torch.ops.resnet_fast


def _acc(dtype):
    return P.acc_dtype(dtype)


def _eps(dtype):
    return torch.finfo(_acc(dtype)).eps


def _activation(shape, dtype, fmt, seed, offset=0.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) + offset
    return t.to(dtype).contiguous(memory_format=fmt)


def _coef(shape, dtype, seed, lo=0.5, hi=1.5):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.rand(shape, generator=g, device="cuda", dtype=torch.float64) * (hi - lo) + lo).to(_acc(dtype))


def _signed(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=g, device="cuda", dtype=torch.float64).to(_acc(dtype))


def _pre_args(shape, dtype, fmt, residual_mode, seed=0):
    """y, scale, shift, residual, res_scale, res_shift for residual_mode None|'plain'|'affine'."""
    n, c = shape[0], shape[1]
    y = _activation(shape, dtype, fmt, seed, offset=0.3)
    scale, shift = _coef((n, c), dtype, seed + 1), _signed((n, c), dtype, seed + 2)
    residual = res_scale = res_shift = None
    if residual_mode is not None:
        residual = _activation(shape, dtype, fmt, seed + 3)
    if residual_mode == "affine":
        res_scale, res_shift = _coef((c,), dtype, seed + 4), _signed((c,), dtype, seed + 5)
    return y, scale, shift, residual, res_scale, res_shift


def _assert_same_layout(out, y):
    assert out.shape == y.shape and out.dtype == y.dtype
    fmt = P.memory_format_of(y)
    assert out.is_contiguous(memory_format=fmt)


def _assert_sums_close(got, ref64, abs64, dtype, what):
    """|got - ref64| <= 64 * eps(acc) * scale (+ a floor for all-zero sums)."""
    assert got.dtype == _acc(dtype), what
    tol = 64 * _eps(dtype) * abs64 + torch.finfo(_acc(dtype)).tiny
    err = (got.double() - ref64).abs()
    bad = err > tol
    assert not bad.any(), f"{what}: max error {err.max().item():.3g}, tolerance at worst {tol[bad].min().item():.3g}"


# ----------------------------------------------------------------------------- bn_stats
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_stats(shape, fmt, dtype):
    ops = _ops()
    y = _activation(shape, dtype, fmt, 7, offset=2.0)  # a mean offset: cancellation-prone sums
    mean, var, sample_mean = ops.bn_stats(y)
    y64 = y.double()
    ref_var, ref_mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    ref_sample = y64.mean(dim=(2, 3))
    absmean = y64.abs().mean(dim=(0, 2, 3))
    _assert_sums_close(mean, ref_mean, absmean, dtype, "mean")
    _assert_sums_close(sample_mean, ref_sample, y64.abs().mean(dim=(2, 3)), dtype, "sample_mean")
    # Chan merges: rounding of the means (~eps*|mean|) enters M2 through delta^2 terms.
    _assert_sums_close(var, ref_var, ref_var + ref_mean.abs() * ref_var.sqrt(), dtype, "var")
    assert sample_mean.shape == (shape[0], shape[1]) and sample_mean.is_contiguous()
    # and the reference primitive agrees in kind (shapes, dtypes)
    r_mean, r_var, r_sample = P.bn_stats(y)
    assert (r_mean.shape, r_var.shape, r_sample.shape) == (mean.shape, var.shape, sample_mean.shape)


# ----------------------------------------------------------------------------- scale_shift_act
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_mode", [None, "plain", "affine"])
@pytest.mark.parametrize("relu", [True, False])
def test_scale_shift_act(shape, fmt, dtype, residual_mode, relu):
    ops = _ops()
    args = _pre_args(shape, dtype, fmt, residual_mode)
    out = ops.scale_shift_act(*args, relu)
    ref = P.scale_shift_act(*args, relu)
    _assert_same_layout(out, args[0])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # rounding mirrored op by op: exact


# ----------------------------------------------------------------------------- backward
def _backward_args(shape, dtype, fmt, residual_mode, seed=11):
    y, scale, shift, residual, res_scale, res_shift = _pre_args(shape, dtype, fmt, residual_mode, seed)
    grad_out = _activation(shape, dtype, fmt, seed + 20)
    center = _signed((shape[1],), dtype, seed + 21)
    res_center = _signed((shape[1],), dtype, seed + 22) if residual is not None else None
    return grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center


def _masked_grad64(grad_out, y, scale, shift, residual, res_scale, res_shift, relu):
    # The mask from the acc-dtype pre-activation (as both implementations compute it).
    return P._masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu).double()


REDUCE_CASES = [
    (residual_mode, relu, with_res_center)
    for residual_mode, relu, with_res_center in itertools.product([None, "plain", "affine"], [True, False], [False, True])
    if residual_mode is not None or not with_res_center
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_mode,relu,with_res_center", REDUCE_CASES)
def test_backward_reduce(shape, fmt, dtype, residual_mode, relu, with_res_center):
    ops = _ops()
    grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center = _backward_args(
        shape, dtype, fmt, residual_mode)
    res_center = res_center if with_res_center else None
    args = (grad_out, y, scale, shift, residual, res_scale, res_shift, relu, center, res_center)
    sum_g, sum_g_y, sum_g_res = ops.scale_shift_act_backward_reduce(*args)
    r_g, r_gy, r_gr = P.scale_shift_act_backward_reduce(*args)
    assert (sum_g.shape, sum_g_y.shape, sum_g_res.shape) == (r_g.shape, r_gy.shape, r_gr.shape)
    assert sum_g_res.dtype == r_gr.dtype and sum_g.is_contiguous() and sum_g_y.is_contiguous()

    g = _masked_grad64(grad_out, y, scale, shift, residual, res_scale, res_shift, relu)
    ty = g * (y.double() - center.double()[None, :, None, None])
    _assert_sums_close(sum_g, g.sum(dim=(2, 3)), g.abs().sum(dim=(2, 3)), dtype, "sum_g")
    _assert_sums_close(sum_g_y, ty.sum(dim=(2, 3)), ty.abs().sum(dim=(2, 3)), dtype, "sum_g_y")
    if res_center is not None:
        tr = g * (residual.double() - res_center.double()[None, :, None, None])
        _assert_sums_close(sum_g_res, tr.sum(dim=(0, 2, 3)), tr.abs().sum(dim=(0, 2, 3)), dtype, "sum_g_res")


APPLY_CASES = REDUCE_CASES  # the same valid combinations, the last flag meaning "grad_residual wanted"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_mode,relu,with_res_grad", APPLY_CASES)
def test_backward_apply(shape, fmt, dtype, residual_mode, relu, with_res_grad):
    ops = _ops()
    grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center = _backward_args(
        shape, dtype, fmt, residual_mode)
    n, c = shape[0], shape[1]
    k_g, k_0 = _signed((n, c), dtype, 31), _signed((n, c), dtype, 32)
    k_y = _signed((c,), dtype, 33)
    res_k = (_signed((c,), dtype, 34), _signed((c,), dtype, 35), _signed((c,), dtype, 36)) if with_res_grad else (
        None, None, None)
    args = (grad_out, y, scale, shift, residual, res_scale, res_shift, relu, k_g, k_0, k_y, center, *res_k,
            res_center if with_res_grad else None)
    grad_y, grad_res = ops.scale_shift_act_backward_apply(*args)
    r_y, r_res = P.scale_shift_act_backward_apply(*args)
    _assert_same_layout(grad_y, y)
    torch.testing.assert_close(grad_y, r_y, rtol=0, atol=0)  # rounding mirrored op by op: exact
    if with_res_grad:
        _assert_same_layout(grad_res, y)
    assert grad_res.shape == r_res.shape and grad_res.dtype == r_res.dtype
    torch.testing.assert_close(grad_res, r_res, rtol=0, atol=0)


# ----------------------------------------------------------------------------- full-size ResNet-50 shapes
FULL_SHAPES = [(256, 64, 112, 112), (256, 256, 56, 56), (256, 1024, 14, 14), (256, 2048, 7, 7)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", FULL_SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet50_batch256(shape, fmt):
    """Every primitive at batch 256 in float16 (the grid sizing at the real shapes)."""
    ops = _ops()
    dtype = torch.float16
    grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center = _backward_args(
        shape, dtype, fmt, "affine")
    mean, var, sample_mean = ops.bn_stats(y)
    y64 = y.double()
    ref_var, ref_mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sample_mean.double(), y64.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    del y64
    pre = (y, scale, shift, residual, res_scale, res_shift)
    torch.testing.assert_close(ops.scale_shift_act(*pre, True), P.scale_shift_act(*pre, True), rtol=0, atol=0)
    args = (grad_out, *pre, True, center, res_center)
    for got, ref in zip(ops.scale_shift_act_backward_reduce(*args), P.scale_shift_act_backward_reduce(*args)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-2)  # fp32 sums of up to 3.2M terms, both sides
    c = shape[1]
    k = [_signed((shape[0], c), dtype, 40), _signed((shape[0], c), dtype, 41)] + [
        _signed((c,), dtype, 42 + i) for i in range(4)]
    apply_args = (grad_out, *pre, True, k[0], k[1], k[2], center, k[3], k[4], k[5], res_center)
    for got, ref in zip(ops.scale_shift_act_backward_apply(*apply_args), P.scale_shift_act_backward_apply(*apply_args)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory < 60 * 2**30,
                    reason="needs about 50 GiB of GPU memory")
def test_more_than_2_31_elements():
    """Batches past 32-bit indexing run as several chunks of whole samples."""
    ops = _ops()
    shape = (33, 64, 1024, 1024)  # 2.2e9 elements
    y = torch.empty(shape, device="cuda", dtype=torch.float16)
    y.view(33, -1).copy_(torch.arange(33, device="cuda", dtype=torch.float16)[:, None])  # sample n holds n
    mean, var, sample_mean = ops.bn_stats(y)
    n = torch.arange(33, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(sample_mean.double(), n[:, None].expand(33, 64), rtol=0, atol=0)
    torch.testing.assert_close(mean.double(), n.mean().expand(64), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), n.var(correction=0).expand(64), rtol=1e-5, atol=0)
    scale = torch.full((33, 64), 2.0, device="cuda")
    shift = -n[:, None].float().expand(33, 64).contiguous()
    out = ops.scale_shift_act(y, scale, shift, None, None, None, False)  # 2n - n = n
    assert torch.equal(out.view(33, -1)[:, ::4096], y.view(33, -1)[:, ::4096])


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(2, 64, 112, 112), (32, 256, 14, 14), (16, 24, 7, 7)])
def test_reductions_are_deterministic(shape, fmt):
    ops = _ops()
    dtype = torch.float32
    grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center = _backward_args(
        shape, dtype, fmt, "affine")
    first = ops.bn_stats(y)
    second = ops.bn_stats(y)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    args = (grad_out, y, scale, shift, residual, res_scale, res_shift, True, center, res_center)
    first = ops.scale_shift_act_backward_reduce(*args)
    second = ops.scale_shift_act_backward_reduce(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- misaligned / errors
def test_misaligned_inputs_take_the_scalar_path():
    ops = _ops()
    base = torch.randn(2 * 64 * 7 * 7 + 1, device="cuda", dtype=torch.float16)
    y = base[1:].view(2, 64, 7, 7)  # storage offset 1: not 16-byte aligned
    scale, shift = _coef((2, 64), torch.float16, 1), _signed((2, 64), torch.float16, 2)
    torch.testing.assert_close(ops.scale_shift_act(y, scale, shift, None, None, None, True),
                               P.scale_shift_act(y, scale, shift, None, None, None, True), rtol=0, atol=0)
    mean, var, _ = ops.bn_stats(y)
    ref_var, ref_mean = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    ops = _ops()
    y = torch.randn(2, 4, 3, 3, device="cuda")
    scale = torch.ones(2, 4, device="cuda")
    with pytest.raises(RuntimeError, match="shift"):
        ops.scale_shift_act(y, scale, torch.ones(4, device="cuda"), None, None, None, True)
    with pytest.raises(RuntimeError, match="scale"):
        ops.scale_shift_act(y, scale.double(), scale, None, None, None, True)
    with pytest.raises(RuntimeError, match="residual"):
        ops.scale_shift_act(y, scale, scale, y.to(memory_format=torch.channels_last).transpose(2, 3), None, None,
                            True)
    with pytest.raises(RuntimeError, match="y"):
        ops.bn_stats(y.transpose(2, 3))
    with pytest.raises(RuntimeError, match="res_center"):
        center = torch.zeros(4, device="cuda")
        ops.scale_shift_act_backward_reduce(y, y, scale, scale, None, None, None, True, center, center)


def test_empty_batch():
    ops = _ops()
    y = torch.randn(0, 4, 3, 3, device="cuda")
    mean, var, sample_mean = ops.bn_stats(y)
    assert mean.shape == (4,) and torch.isnan(mean).all() and sample_mean.shape == (0, 4)
    out = ops.scale_shift_act(y, torch.ones(0, 4, device="cuda"), torch.ones(0, 4, device="cuda"), None, None, None,
                              True)
    assert out.shape == y.shape


# ----------------------------------------------------------------------------- opcheck
def _opcheck_samples():
    dtype = torch.float32
    fmt = torch.channels_last
    grad_out, y, scale, shift, residual, res_scale, res_shift, center, res_center = _backward_args(
        (2, 16, 5, 5), dtype, fmt, "affine")
    c = y.shape[1]
    k_c = [_signed((c,), dtype, 50 + i) for i in range(4)]
    k_nc = [_signed((2, c), dtype, 60 + i) for i in range(2)]
    return {
        "bn_stats": (y,),
        "scale_shift_act": (y, scale, shift, residual, res_scale, res_shift, True),
        "scale_shift_act_backward_reduce": (grad_out, y, scale, shift, residual, res_scale, res_shift, True, center,
                                            res_center),
        "scale_shift_act_backward_apply": (grad_out, y, scale, shift, residual, res_scale, res_shift, True, k_nc[0],
                                           k_nc[1], k_c[0], center, k_c[1], k_c[2], k_c[3], res_center),
        "bn_finalize": (center, k_c[0].abs(), k_c[1], k_c[2].half(), 1e-5, 50, 2),
        "bn_backward_finalize": (k_nc[0], k_nc[1], k_c[0].abs(), k_c[1], 50, 2, True),
    }


@pytest.mark.parametrize("name", list(P.PRIMITIVES))
def test_opcheck(name):
    ops = _ops()
    torch.library.opcheck(getattr(ops, name).default, _opcheck_samples()[name])


# ----------------------------------------------------------------------------- finalize
def _on_cuda(args):
    return tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in args)


@pytest.mark.parametrize("n", [0, 5])
@pytest.mark.parametrize("stat_dtype", [torch.float32, torch.float64])
def test_finalize_kernels_equal_the_cpu_kernels(stat_dtype, n):
    """bn_finalize / bn_backward_finalize: both devices evaluate csrc/bn_algebra.h with one
    rounding per operation and add the rows of (N, C) sums in n order, so the CUDA kernels
    give the C++ CPU kernels' bits (these are tested against the reference in
    test_finalize_primitives.py). C = 300 spans several blocks of channels."""
    ops = _ops()
    c = 300
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(c, generator=g, dtype=torch.float64).to(stat_dtype)
    var = (torch.rand(c, generator=g, dtype=torch.float64) * 4).to(stat_dtype)
    for param_dtype in (None, torch.float16, torch.bfloat16, torch.float32):
        weight = bias = None
        if param_dtype is not None:
            weight = (torch.randn(c, generator=g) + 1).to(param_dtype)
            bias = torch.randn(c, generator=g).to(param_dtype)
        args = (mean, var, weight, bias, 1e-5, 1000, n)
        cpu = ops.bn_finalize(*args)
        for a, b in zip(cpu, ops.bn_finalize(*_on_cuda(args))):
            assert b.is_cuda and torch.equal(a, b.cpu()), param_dtype
        for rows in (None, 1, 64):
            shape = (c,) if rows is None else (rows, c)
            sum_dz = (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(stat_dtype)
            sum_dz_y = (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(stat_dtype)
            for use_batch_stats in (True, False):
                args = (sum_dz, sum_dz_y, cpu[0], weight, 1000, n, use_batch_stats)
                want = ops.bn_backward_finalize(*args)
                for a, b in zip(want, ops.bn_backward_finalize(*_on_cuda(args))):
                    assert b.is_cuda and torch.equal(a, b.cpu()), (param_dtype, rows, use_batch_stats)
