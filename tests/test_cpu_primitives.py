"""The C++ CPU kernels of the four primitives (csrc/cpu) against their executable specification.

``torch.ops.resnet_fast.<prim>`` on CPU tensors is compared with
``resnet_fast.ops.primitives.<prim>`` (plain torch on the same tensors) for odd and ResNet
shapes, both memory formats, the four dtypes and every valid combination of the optional
arguments; plus bn_stats accuracy at a large mean, determinism, the generic and AVX2 builds
agreeing, opcheck, and errors that name the argument. The finalize primitives (bn_finalize,
bn_backward_finalize) are tested in test_finalize_primitives.py, except for opcheck here.

Tolerances, and why:
- Elementwise outputs (scale_shift_act, scale_shift_act_backward_apply). The kernels
  evaluate the reference's expression in the same order in the acc dtype and narrow with
  round-to-nearest-even, so where no multiply-add is contracted into an FMA (GCC on x86-64,
  how csrc/cpu is compiled there) they are bit-identical: checked exactly on x86-64.
  Elsewhere a contracted a * b + c rounds once less: we allow 4 * eps(acc) * sum|terms|
  (float32: ~5e-7 of the terms, float64: ~1e-15), plus for float16/bfloat16 one unit in the
  last place of the output, since an acc difference in the last bit can flip the narrowing.
- Reductions (bn_stats, scale_shift_act_backward_reduce) sum in another order than torch
  (vector lanes, chunks, double merges), so they are compared with a float64 evaluation
  of the same sums on the same (possibly low-precision) inputs: error <= 64 * eps(acc) *
  sum|terms|. A sum of m terms errs by about sqrt(m) * eps * sum|terms| (m is at most
  a few hundred per acc lane here; the merges are in double); an indexing bug errs by O(1).
"""
from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys

import pytest
import torch

import resnet_fast  # noqa: F401  (registers torch.ops.resnet_fast)
from resnet_fast import _extension
from resnet_fast.ops import primitives as P

pytestmark = pytest.mark.skipif(
    not (_extension.load() and torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast::bn_stats", "CPU")),
    reason=f"the C++ CPU kernels are not built/loaded ({_extension.status.get('error')})")

OPS = torch.ops.resnet_fast
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FORMATS = [torch.contiguous_format, torch.channels_last]
# Vector tails along HW and C, C below and above the vector width, 1x1 planes (both layouts
# are then the same bytes), ResNet stage shapes at a small batch, and wide NHWC rows of
# >= 4 KiB (C = 1030 / 2056: >= 4 KiB in 32-bit / 16-bit floats) with a vector tail along C.
SHAPES = [(2, 64, 8, 8), (3, 3, 5, 7), (1, 63, 7, 7), (2, 130, 3, 3), (4, 16, 1, 1), (2, 256, 14, 14),
          (2, 1030, 3, 5), (1, 2056, 3, 3)]
# Shapes that split one (n, c) plane into several chunks (NCHW) and one sample's rows into
# several blocks and chunks (NHWC): the Chan merges and the block merges.
CHUNKED_SHAPES = [(2, 3, 80, 80), (2, 64, 40, 40)]
EXACT = platform.machine() in ("x86_64", "AMD64")  # no FMA contraction: see the module docstring
RESIDUAL_MODES = [None, "plain", "affine"]


def shape_cases(all_cases, some_cases):
    """(shape, *case): every case for the small shapes, a few for the largest (keeps the file fast)."""
    return [(shape, *case) for shape in SHAPES
            for case in (some_cases if torch.Size(shape).numel() > 50_000 else all_cases)]


def acc(dtype):
    return P.acc_dtype(dtype)


# ----------------------------------------------------------------------------- inputs
def randn(shape, dtype, seed, offset=0.0, fmt=torch.contiguous_format):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64) + offset
    return t.to(dtype).contiguous(memory_format=fmt)


def coefficients(y, seed, residual_mode):
    """scale, shift (N, C) and, for residual_mode "affine", res_scale, res_shift (C,)."""
    n, c, a = y.shape[0], y.shape[1], acc(y.dtype)
    scale, shift = randn((n, c), a, seed), randn((n, c), a, seed + 1)
    if residual_mode == "affine":
        return scale, shift, randn((c,), a, seed + 2), randn((c,), a, seed + 3)
    return scale, shift, None, None


def forward_args(shape, dtype, fmt, residual_mode, seed=0):
    """(y, scale, shift, residual, res_scale, res_shift); y is offset so ReLU masks are mixed."""
    y = randn(shape, dtype, seed, offset=0.3, fmt=fmt)
    scale, shift, res_scale, res_shift = coefficients(y, seed + 10, residual_mode)
    residual = None if residual_mode is None else randn(shape, dtype, seed + 20, fmt=fmt)
    return y, scale, shift, residual, res_scale, res_shift


# ----------------------------------------------------------------------------- checks
def check_layout(out, y):
    assert out.shape == y.shape and out.dtype == y.dtype
    assert out.is_contiguous(memory_format=P.memory_format_of(y))


def check_elementwise(got, ref, terms, what):
    """got == ref on x86-64; else within the contraction + narrowing bound of the docstring."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    if EXACT:
        assert torch.equal(got, ref), f"{what}: max difference {(got.double() - ref.double()).abs().max():.3g}"
        return
    tol = 4 * torch.finfo(acc(ref.dtype)).eps * terms
    if ref.dtype in (torch.float16, torch.bfloat16):
        tol = tol + torch.finfo(ref.dtype).eps * ref.double().abs() + torch.finfo(ref.dtype).tiny
    err = (got.double() - ref.double()).abs()
    assert (err <= tol).all(), f"{what}: max error {err.max():.3g}"


def check_sum(got, truth64, abs_terms64, dtype, what):
    """A sum (or mean) against its float64 value: error <= 64 * eps(acc) * sum|terms|."""
    assert got.dtype == acc(dtype) and got.shape == truth64.shape, what
    tol = 64 * torch.finfo(acc(dtype)).eps * abs_terms64 + torch.finfo(acc(dtype)).tiny
    err = (got.double() - truth64).abs()
    assert (err <= tol).all(), f"{what}: max error {err.max():.3g}, max tolerance {tol.max():.3g}"


def masked_grad64(grad_out, y, scale, shift, residual, res_scale, res_shift, relu):
    """g in float64, with the ReLU mask taken from the acc-dtype z (as both sides compute it)."""
    return P._masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu).double()


def nc(t):
    return t.double()[:, :, None, None]


def ch(t):
    return t.double()[None, :, None, None]


# ----------------------------------------------------------------------------- bn_stats
def check_bn_stats(y):
    mean, var, sample_mean = OPS.bn_stats(y)
    r_mean, r_var, r_sample = P.bn_stats(y)
    assert [t.shape for t in (mean, var, sample_mean)] == [t.shape for t in (r_mean, r_var, r_sample)]
    assert sample_mean.is_contiguous()
    y64 = y.double()
    var64, mean64 = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    check_sum(mean, mean64, y64.abs().mean(dim=(0, 2, 3)), y.dtype, "mean")
    check_sum(sample_mean, y64.mean(dim=(2, 3)), y64.abs().mean(dim=(2, 3)), y.dtype, "sample_mean")
    # M2 is a sum of squares of d = x - shift, each d rounded relative to |x| ~ |mean| + std.
    check_sum(var, var64, 2 * var64 + mean64.abs() * var64.sqrt(), y.dtype, "var")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bn_stats(shape, fmt, dtype):
    check_bn_stats(randn(shape, dtype, 1, offset=2.0, fmt=fmt))  # offset: cancellation-prone sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", CHUNKED_SHAPES)
def test_bn_stats_chunked(shape, fmt, dtype):
    check_bn_stats(randn(shape, dtype, 2, offset=-1.5, fmt=fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_bn_stats_large_mean(fmt):
    """|mean| >> std (1000 + 1e-3 * randn in float32): a sum of squares would lose every digit
    (1e6 - 1e6 in float32); the shifted two-pass chunks keep the variance to ~1e-6."""
    gen = torch.Generator().manual_seed(3)
    y = (1e3 + 1e-3 * torch.randn(4, 32, 48, 48, generator=gen)).contiguous(memory_format=fmt)
    mean, var, sample_mean = OPS.bn_stats(y)
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)  # the same float32 values
    assert ((var.double() - var64).abs() / var64).max() < 1e-4
    # The means are as good as a float32 result can be: within one unit in the last place.
    ulp = torch.finfo(torch.float32).eps * 1e3
    assert (mean.double() - mean64).abs().max() <= ulp
    assert (sample_mean.double() - y.double().mean(dim=(2, 3))).abs().max() <= ulp


def test_bn_stats_unrepresentative_first_rows():
    """NHWC blocks take their shift from their first rows: make those rows far from the rest
    (a band of 1000 + 1e-3 * randn over 1e-3 * randn), so that the shift is 5.6 standard
    deviations off the mean. Measured: relative variance error 6.5e-7 (torch's float32
    var_mean 2.6e-8), mean error 1.3e-7 standard deviations; bounds 1e-5."""
    gen = torch.Generator().manual_seed(4)
    y = 1e-3 * torch.randn(2, 16, 64, 64, generator=gen)
    y[:, :, :2, :] += 1e3  # the first 128 rows of each sample: the first block's shift rows and more
    y = y.contiguous(memory_format=torch.channels_last)
    mean, var, sample_mean = OPS.bn_stats(y)
    var64, mean64 = torch.var_mean(y.double(), dim=(0, 2, 3), correction=0)
    assert ((var.double() - var64).abs() / var64).max() < 1e-5
    assert ((mean.double() - mean64).abs() / var64.sqrt()).max() < 1e-5
    sample64 = y.double().mean(dim=(2, 3))
    assert ((sample_mean.double() - sample64).abs() / var64.sqrt()).max() < 1e-5


# ----------------------------------------------------------------------------- scale_shift_act
def preact_terms(y, scale, shift, residual, res_scale, res_shift):
    """sum of |terms| of z = y * scale + shift (+ residual * res_scale + res_shift), in float64."""
    terms = (y.double() * nc(scale)).abs() + nc(shift).abs()
    if residual is not None:
        r = residual.double()
        terms = terms + ((r * ch(res_scale)).abs() + ch(res_shift).abs() if res_scale is not None else r.abs())
    return terms


FORWARD_PARAMS = shape_cases(list(itertools.product(RESIDUAL_MODES, [True, False])),
                             [(None, True), ("plain", False), ("affine", True)])


@pytest.mark.parametrize("shape,residual_mode,relu", FORWARD_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_scale_shift_act(shape, fmt, dtype, residual_mode, relu):
    args = forward_args(shape, dtype, fmt, residual_mode)
    out = OPS.scale_shift_act(*args, relu)
    check_layout(out, args[0])
    check_elementwise(out, P.scale_shift_act(*args, relu), preact_terms(*args), "out")


# ----------------------------------------------------------------------------- backward
def backward_args(shape, dtype, fmt, residual_mode, seed=5):
    """grad_out, the forward's six arguments, center, res_center (res_center only with a residual)."""
    y, scale, shift, residual, res_scale, res_shift = forward_args(shape, dtype, fmt, residual_mode, seed)
    grad_out = randn(shape, dtype, seed + 30, fmt=fmt)
    c, a = shape[1], acc(dtype)
    center = randn((c,), a, seed + 31)
    res_center = randn((c,), a, seed + 32) if residual is not None else None
    return grad_out, (y, scale, shift, residual, res_scale, res_shift), center, res_center


# (residual_mode, relu, with the residual's terms: res_center / res_k_*); those need a residual.
BACKWARD_CASES = [case for case in itertools.product(RESIDUAL_MODES, [True, False], [False, True])
                  if case[0] is not None or not case[2]]
BACKWARD_PARAMS = shape_cases(BACKWARD_CASES, [(None, True, False), ("plain", False, True), ("affine", True, True)])


@pytest.mark.parametrize("shape,residual_mode,relu,with_res", BACKWARD_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_backward_reduce(shape, fmt, dtype, residual_mode, relu, with_res):
    check_backward_reduce(shape, fmt, dtype, residual_mode, relu, with_res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", CHUNKED_SHAPES)
def test_backward_reduce_chunked(shape, fmt, dtype):
    check_backward_reduce(shape, fmt, dtype, "affine", True, True)


def check_backward_reduce(shape, fmt, dtype, residual_mode, relu, with_res):
    grad_out, pre, center, res_center = backward_args(shape, dtype, fmt, residual_mode)
    args = (grad_out, *pre, relu, center, res_center if with_res else None)
    got = OPS.scale_shift_act_backward_reduce(*args)
    ref = P.scale_shift_act_backward_reduce(*args)
    for g_t, r_t in zip(got, ref):
        assert g_t.shape == r_t.shape and g_t.dtype == r_t.dtype and g_t.is_contiguous()
    g = masked_grad64(grad_out, *pre, relu)
    g_y = g * (pre[0].double() - ch(center))
    check_sum(got[0], g.sum(dim=(2, 3)), g.abs().sum(dim=(2, 3)), dtype, "sum_g")
    check_sum(got[1], g_y.sum(dim=(2, 3)), g_y.abs().sum(dim=(2, 3)), dtype, "sum_g_y")
    if with_res:
        g_r = g * (pre[3].double() - ch(res_center))
        check_sum(got[2], g_r.sum(dim=(0, 2, 3)), g_r.abs().sum(dim=(0, 2, 3)), dtype, "sum_g_res")


@pytest.mark.parametrize("shape,residual_mode,relu,with_res", BACKWARD_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_backward_apply(shape, fmt, dtype, residual_mode, relu, with_res):
    grad_out, pre, center, res_center = backward_args(shape, dtype, fmt, residual_mode)
    (n, c), a = shape[:2], acc(dtype)
    k_g, k_0, k_y = randn((n, c), a, 40), randn((n, c), a, 41), randn((c,), a, 42)
    res_k = (randn((c,), a, 43), randn((c,), a, 44), randn((c,), a, 45), res_center) if with_res else (None,) * 4
    args = (grad_out, *pre, relu, k_g, k_0, k_y, center, *res_k)
    grad_y, grad_res = OPS.scale_shift_act_backward_apply(*args)
    ref_y, ref_res = P.scale_shift_act_backward_apply(*args)

    g = masked_grad64(grad_out, *pre, relu).abs()
    check_layout(grad_y, pre[0])
    terms_y = nc(k_g).abs() * g + nc(k_0).abs() + (ch(k_y) * (pre[0].double() - ch(center))).abs()
    check_elementwise(grad_y, ref_y, terms_y, "grad_y")
    if with_res:
        check_layout(grad_res, pre[0])
        r_centered = pre[3].double() - ch(res_center)
        terms_r = ch(res_k[0]).abs() * g + ch(res_k[1]).abs() + (ch(res_k[2]) * r_centered).abs()
        check_elementwise(grad_res, ref_res, terms_r, "grad_residual")
    else:
        assert grad_res.shape == ref_res.shape == (0,) and grad_res.dtype == ref_res.dtype


# ----------------------------------------------------------------------------- determinism, builds
def all_outputs(shape, fmt, dtype=torch.float32):
    """Every primitive's outputs on one input set (residual with BN, relu)."""
    grad_out, pre, center, res_center = backward_args(shape, dtype, fmt, "affine", seed=9)
    (n, c), a = shape[:2], acc(dtype)
    k = [randn((n, c), a, 50), randn((n, c), a, 51)] + [randn((c,), a, 52 + i) for i in range(4)]
    return [*OPS.bn_stats(pre[0]), OPS.scale_shift_act(*pre, True),
            *OPS.scale_shift_act_backward_reduce(grad_out, *pre, True, center, res_center),
            *OPS.scale_shift_act_backward_apply(grad_out, *pre, True, k[0], k[1], k[2], center, k[3], k[4], k[5],
                                                res_center)]


DETERMINISM_SHAPES = [(2, 64, 40, 40), (2, 3, 80, 80), (3, 24, 14, 14)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_results_do_not_depend_on_thread_count(fmt):
    threads = torch.get_num_threads()
    try:
        for shape in DETERMINISM_SHAPES:
            torch.set_num_threads(1)
            one = all_outputs(shape, fmt)
            torch.set_num_threads(max(2, threads))
            many = all_outputs(shape, fmt)
            assert all(torch.equal(a, b) for a, b in zip(one, many)), shape
    finally:
        torch.set_num_threads(threads)


def channel_slice(t, c):
    """Channel c of an (N, C, H, W) activation or (N, C) table (kept 2-D / 4-D), or of a (C,) vector."""
    if t is None:
        return None
    return t[c:c + 1] if t.dim() == 1 else t[:, c:c + 1].contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("hw", [(7, 7), (16, 32), (17, 31)])
def test_grouped_planes_match_single_planes(hw, dtype):
    """NCHW reductions over planes of <= 512 values run 8 planes at a time (vec.h
    run_plane_groups; 527 values: one by one), the leftovers one by one. Each plane must get,
    bit for bit, what it gets computed alone, wherever the groups begin (so on any thread count)."""
    shape = (1, 11, *hw)  # 11 planes: a group and leftovers
    grad_out, pre, center, res_center = backward_args(shape, dtype, torch.contiguous_format, "affine", seed=3)
    stats = OPS.bn_stats(pre[0])
    sums = OPS.scale_shift_act_backward_reduce(grad_out, *pre, True, center, res_center)
    for c in range(shape[1]):
        alone = [channel_slice(t, c) for t in (grad_out, *pre, center, res_center)]
        want = OPS.bn_stats(alone[1]) + OPS.scale_shift_act_backward_reduce(*alone[:7], True, *alone[7:])
        for got, expected in zip(stats + sums, want):
            assert torch.equal(channel_slice(got, c).reshape(-1), expected.reshape(-1)), (hw, dtype, c)


# The AVX2 build against the generic one: the determinism shapes, wide NHWC rows with a vector
# tail, all four dtypes.
BUILD_CASES = ([(shape, fmt, torch.float32) for shape in DETERMINISM_SHAPES for fmt in FORMATS]
               + [((2, 1030, 3, 5), torch.channels_last, torch.float32)]
               + [((2, 130, 5, 7), fmt, dtype) for fmt in FORMATS for dtype in DTYPES])


@pytest.mark.skipif(_extension.cpu_kernels() != "avx2", reason="only the generic build runs on this CPU")
def test_kernel_builds_agree(tmp_path):
    """kernels_generic.cpp and kernels_avx2.cpp give the same results bit for bit (no FMA, the
    same summation order), so the build torch's CPU capability picks changes only the speed.
    The build is chosen once per process: the generic one runs in a subprocess under
    ATEN_CPU_CAPABILITY=default (torch's capability DEFAULT, for which csrc/cpu/common.cpp
    picks the generic build), the AVX2 one here."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(resnet_fast.__file__)))  # the same build
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([package_parent, tests_dir, env.get("PYTHONPATH", "")])
    out_file = str(tmp_path / "generic.pt")
    script = ("import torch, test_cpu_primitives as t; from resnet_fast import _extension; "
              "assert torch.backends.cpu.get_cpu_capability() == 'DEFAULT'; "
              "assert _extension.cpu_kernels() == 'generic'; "
              f"torch.save([t.all_outputs(*case) for case in t.BUILD_CASES], {out_file!r})")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    generic = torch.load(out_file)
    for case, expected in zip(BUILD_CASES, generic):
        got = all_outputs(*case)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), case


# ----------------------------------------------------------------------------- edge cases and errors
def test_empty_batch():
    y = torch.randn(0, 4, 3, 3)
    mean, var, sample_mean = OPS.bn_stats(y)
    assert mean.shape == var.shape == (4,) and torch.isnan(mean).all() and sample_mean.shape == (0, 4)
    ones = torch.ones(0, 4)
    assert OPS.scale_shift_act(y, ones, ones, None, None, None, True).shape == y.shape
    sum_g, sum_g_y, sum_g_res = OPS.scale_shift_act_backward_reduce(y, y, ones, ones, None, None, None, True,
                                                                   torch.zeros(4), None)
    assert sum_g.shape == (0, 4) and sum_g_res.shape == (0,)


def _ok_forward():
    y = torch.randn(2, 4, 3, 3)
    return y, torch.ones(2, 4), torch.zeros(2, 4)


def _bad_inputs():
    y, s, b = _ok_forward()
    c4, r = torch.zeros(4), torch.randn_like(y)
    cl = y.contiguous(memory_format=torch.channels_last)
    return {
        "rank": (lambda: OPS.bn_stats(y[0]), "y"),
        "y strided": (lambda: OPS.bn_stats(y.transpose(2, 3)), "y"),
        "scale shape": (lambda: OPS.scale_shift_act(y, torch.ones(4), b, None, None, None, True), "scale"),
        "shift dtype": (lambda: OPS.scale_shift_act(y, s, b.double(), None, None, None, True), "shift"),
        "residual dtype": (lambda: OPS.scale_shift_act(y, s, b, r.double(), None, None, True), "residual"),
        "residual layout": (lambda: OPS.scale_shift_act(y, s, b, r.contiguous(memory_format=torch.channels_last),
                                                        None, None, True), "residual"),
        "res_shift missing": (lambda: OPS.scale_shift_act(y, s, b, r, c4, None, True), "res_shift"),
        "res_scale without residual": (lambda: OPS.scale_shift_act(y, s, b, None, c4, c4, True), "residual"),
        "grad_out layout": (lambda: OPS.scale_shift_act_backward_reduce(cl, y, s, b, None, None, None, True, c4, None),
                            "grad_out"),
        "grad_out shape": (lambda: OPS.scale_shift_act_backward_reduce(y[:1], y, s, b, None, None, None, True, c4,
                                                                       None), "grad_out"),
        "center shape": (lambda: OPS.scale_shift_act_backward_reduce(y, y, s, b, None, None, None, True, s, None),
                         "center"),
        "res_center without residual": (lambda: OPS.scale_shift_act_backward_reduce(y, y, s, b, None, None, None,
                                                                                    True, c4, c4), "res_center"),
        "k_g shape": (lambda: OPS.scale_shift_act_backward_apply(y, y, s, b, None, None, None, True, c4, s, c4, c4,
                                                                 None, None, None, None), "k_g"),
        "res_k_r missing": (lambda: OPS.scale_shift_act_backward_apply(y, y, s, b, r, None, None, True, s, s, c4, c4,
                                                                       c4, c4, None, c4), "res_k_r"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_name_the_argument(case):
    call, name = _bad_inputs()[case]
    with pytest.raises(RuntimeError, match=rf"resnet_fast::\w+: .*\b{name}\b"):
        call()


# ----------------------------------------------------------------------------- opcheck
def _opcheck_args(name, fmt):
    grad_out, pre, center, res_center = backward_args((2, 12, 5, 5), torch.float32, fmt, "affine", seed=60)
    c = pre[0].shape[1]
    k_nc = [randn((2, c), torch.float32, 61 + i) for i in range(2)]
    k_c = [randn((c,), torch.float32, 63 + i) for i in range(4)]
    return {
        "bn_stats": (pre[0],),
        "scale_shift_act": (*pre, True),
        "scale_shift_act_backward_reduce": (grad_out, *pre, True, center, res_center),
        "scale_shift_act_backward_apply": (grad_out, *pre, True, k_nc[0], k_nc[1], k_c[0], center, k_c[1], k_c[2],
                                           k_c[3], res_center),
        "bn_finalize": (center, k_c[0].abs(), k_c[1], k_c[2].half(), 1e-5, 50, 2),
        "bn_backward_finalize": (k_nc[0], k_nc[1], k_c[0].abs(), k_c[1], 50, 2, True),
    }[name]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(P.PRIMITIVES))
def test_opcheck(name, fmt):
    torch.library.opcheck(getattr(OPS, name).default, _opcheck_args(name, fmt))
