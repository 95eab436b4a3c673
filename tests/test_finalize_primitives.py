"""The C++ CPU kernels of bn_finalize and bn_backward_finalize against their specification.

``torch.ops.resnet_fast.<prim>`` on CPU tensors (csrc/cpu/bn_finalize.cpp,
bn_backward_finalize.cpp, on the formulas of csrc/bn_algebra.h) is compared with
``resnet_fast.ops.primitives.<prim>`` (plain torch) over float32 and float64 statistics,
weight / bias absent or given in float16, bfloat16, float32 (and float64), n = 0 and n > 0,
per-sample (N, C) and total (C,) gradient sums, training and eval, count = 1, strided
inputs, and bad inputs, whose errors name the op and the argument.

Tolerances, and why: the kernels evaluate the reference's expressions in the same order,
one correctly rounded operation each (no FMA contraction: -ffp-contract=off), so outputs
are compared bit for bit (torch.equal), with two exceptions, each compared exactly against
the reference computed the kernels' way and within a bound against the reference itself:
- sqrt. torch's vectorized CPU sqrt is not correctly rounded (torch 2.14.1, AVX2 and
  AVX512: about 1 in 5 float32 and 1 in 70 float64 values differ by one unit in the last
  place), where the kernels' sqrt is, on the CPU as on CUDA (__fsqrt_rn / __dsqrt_rn,
  like torch's CUDA sqrt). So bn_finalize is compared exactly with the reference under a
  correctly rounded torch.sqrt (Python's math.sqrt per element; for float32 through
  double, which rounds sqrt correctly), and with the plain reference within 4 eps(acc)
  relative (one ulp of sqrt carried through 1/x and two products; for shift, relative
  to its terms |bias| + |mean * scale|, since their difference may cancel).
- The sum over n of (N, C) gradient sums, whose order torch's sum chooses (vectorized,
  cascaded) while the kernels add rows in n order: exactly against the reference fed the
  totals added in n order, and within 4 * N * eps(acc) of the sum of absolute values (the
  bound of any summation order) against the reference's own sums.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import resnet_fast  # noqa: F401  (registers torch.ops.resnet_fast)
from resnet_fast import _extension
from resnet_fast.ops import primitives as P

pytestmark = pytest.mark.skipif(
    not (_extension.load() and torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast::bn_finalize", "CPU")),
    reason=f"the C++ CPU kernels are not built/loaded ({_extension.status.get('error')})")

OPS = torch.ops.resnet_fast
STAT_DTYPES = [torch.float32, torch.float64]
PARAM_DTYPES = [None, torch.float16, torch.bfloat16, torch.float32]
C = 37  # not a multiple of any vector width


def gen(seed):
    return torch.Generator().manual_seed(seed)


def statistics(dtype, c=C, seed=0):
    """(mean, biased var) with a zero variance, tiny and large ones among them."""
    g = gen(seed)
    mean = torch.randn(c, generator=g, dtype=torch.float64) * 3
    var = torch.rand(c, generator=g, dtype=torch.float64) * 4
    var[0], var[1], var[2] = 0.0, 1e-9, 1e4
    return mean.to(dtype), var.to(dtype)


def param(dtype, seed, c=C):
    if dtype is None:
        return None
    return (torch.randn(c, generator=gen(seed), dtype=torch.float64) + 1).to(dtype)


def _correctly_rounded_sqrt(t):
    values = [math.sqrt(v) for v in t.reshape(-1).tolist()]
    return torch.tensor(values, dtype=torch.float64).to(t.dtype).reshape(t.shape)


def reference_bn_finalize(*args):
    """(exact, plain): P.bn_finalize with a correctly rounded sqrt (what the kernels compute
    exactly), and P.bn_finalize itself (torch's sqrt)."""
    sqrt = torch.sqrt
    torch.sqrt = _correctly_rounded_sqrt
    try:
        exact = P.bn_finalize(*args)
    finally:
        torch.sqrt = sqrt
    return exact, P.bn_finalize(*args)


def check_bn_finalize(args, what):
    got = OPS.bn_finalize(*args)
    exact, plain = reference_bn_finalize(*args)
    assert_equal(got, exact, what)
    eps = torch.finfo(got[0].dtype).eps
    mean_a = (args[0] * plain[2]).abs()  # shift = bias - mean * a: relative to its terms
    for i, (a, b) in enumerate(zip(got, plain)):
        bound = 4 * eps * (b.abs() + (mean_a if i == 3 else 0))
        assert ((a - b).abs() <= bound).all(), (what, i)
    return got


def assert_equal(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, i, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), (what, i, (a - b).abs().max())


# ----------------------------------------------------------------------------- bn_finalize
@pytest.mark.parametrize("n", [0, 5])
@pytest.mark.parametrize("count", [1, 2, 49, 1_000_003])
@pytest.mark.parametrize("stat_dtype", STAT_DTYPES)
def test_bn_finalize_matches_reference(stat_dtype, count, n):
    mean, var = statistics(stat_dtype)
    for w_dtype, b_dtype in itertools.product(PARAM_DTYPES, PARAM_DTYPES):
        weight, bias = param(w_dtype, 1), param(b_dtype, 2)
        for eps in (1e-5, 1e-3):
            got = check_bn_finalize((mean, var, weight, bias, eps, count, n), (w_dtype, b_dtype, eps))
            table = (n, C) if n > 0 else (C,)
            assert got[2].shape == got[3].shape == table and got[2].is_contiguous()
            assert all(t.dtype == stat_dtype for t in got)


def test_bn_finalize_count_one_keeps_the_variance():
    """count = 1: the unbiased factor is 1 / max(0, 1) = 1, not a division by zero."""
    mean, var = statistics(torch.float32)
    _, var_update, _, _ = OPS.bn_finalize(mean, var, None, None, 1e-5, 1, 0)
    assert torch.equal(var_update, var)


def test_bn_finalize_float64_params_of_float32_statistics():
    """Parameters are read in the statistics' dtype: float64 ones are rounded to float32 first."""
    mean, var = statistics(torch.float32)
    check_bn_finalize((mean, var, param(torch.float64, 3), param(torch.float64, 4), 1e-5, 10, 2), "float64 params")


def test_bn_finalize_strided_inputs():
    mean, var = statistics(torch.float64, c=2 * C)
    weight = torch.randn(C, 3, generator=gen(5))[:, 1]  # stride 3
    check_bn_finalize((mean[::2], var[1::2], weight, param(torch.float16, 6, c=2 * C)[::2], 1e-5, 8, 3), "strided")


# ----------------------------------------------------------------------------- bn_backward_finalize
def gradient_sums(dtype, rows, seed):
    """(sum_dz, sum_dz_y): per-sample (rows, C) sums, or (C,) totals for rows = None."""
    shape = (C,) if rows is None else (rows, C)
    g = gen(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(dtype), \
        (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(dtype)


def in_n_order(t):
    """The total over rows added in n order, as the kernels add them; a (C,) total as it is."""
    if t.dim() == 1:
        return t
    total = t[0].clone()
    for row in t[1:]:
        total = total + row
    return total


@pytest.mark.parametrize("use_batch_stats", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("n", [0, 4])
@pytest.mark.parametrize("rows", [None, 1, 4, 64], ids=["totals", "N1", "N4", "N64"])
@pytest.mark.parametrize("stat_dtype", STAT_DTYPES)
def test_bn_backward_finalize_matches_reference(stat_dtype, rows, n, use_batch_stats):
    _, var = statistics(stat_dtype)
    invstd = P.bn_finalize(var, var, None, None, 1e-5, 2, 0)[0]
    sum_dz, sum_dz_y = gradient_sums(stat_dtype, rows, seed=7)
    for w_dtype in PARAM_DTYPES:
        weight = param(w_dtype, 8)
        for count in (1, 3, 4 * 49):
            got = OPS.bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, count, n, use_batch_stats)
            # Exactly what the reference computes from the same totals (added in n order).
            want = P.bn_backward_finalize(in_n_order(sum_dz), in_n_order(sum_dz_y), invstd, weight, count, n,
                                          use_batch_stats)
            assert_equal(got, want, (w_dtype, count))
            table = (n, C) if n > 0 else (C,)
            assert got[2].shape == got[3].shape == table and got[4].shape == (C,)
            # And close to the reference's own summation order.
            reference = P.bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, count, n, use_batch_stats)
            terms = max(1, rows or 1)
            eps = torch.finfo(stat_dtype).eps
            for a, b, s in zip(got[:2], reference[:2], (sum_dz_y, sum_dz)):
                bound = 4 * terms * eps * s.abs().reshape(-1, C).sum(0) * (invstd.abs() + 1)
                assert ((a - b).abs() <= bound).all()


def test_bn_backward_finalize_mixed_sum_shapes_and_strides():
    """sum_dz as (N, C) per-sample sums with sum_dz_y as (C,) totals, both strided."""
    _, var = statistics(torch.float32)
    invstd = P.bn_finalize(var, var, None, None, 1e-5, 2, 0)[0]
    per_sample = torch.randn(C, 6, generator=gen(9)).t()  # (6, C), column-major
    totals = torch.randn(2 * C, generator=gen(10))[::2]
    args = (per_sample, totals, invstd, param(torch.bfloat16, 11), 12, 6, True)
    want = P.bn_backward_finalize(in_n_order(per_sample), totals, *args[2:])
    assert_equal(OPS.bn_backward_finalize(*args), want, "mixed")


def test_bn_backward_finalize_eval_zeroes_the_statistics_terms():
    _, var = statistics(torch.float64)
    invstd = P.bn_finalize(var, var, None, None, 1e-5, 2, 0)[0]
    sum_dz, sum_dz_y = gradient_sums(torch.float64, 3, seed=12)
    _, _, k_g, k_0, k_y = OPS.bn_backward_finalize(sum_dz, sum_dz_y, invstd, None, 10, 3, False)
    assert torch.equal(k_g, invstd.expand(3, -1)) and not k_0.any() and not k_y.any()


def test_empty_channels_and_empty_batch():
    empty = torch.empty(0)
    outs = OPS.bn_finalize(empty, empty, None, None, 1e-5, 4, 3)
    assert [tuple(t.shape) for t in outs] == [(0,), (0,), (3, 0), (3, 0)]
    sums = torch.zeros(0, C)  # no samples: every sum is 0
    invstd = torch.ones(C)
    grad_weight, grad_bias, _, k_0, _ = OPS.bn_backward_finalize(sums, sums, invstd, None, 1, 2, True)
    assert not grad_weight.any() and not grad_bias.any() and k_0.shape == (2, C) and not k_0.any()


# ----------------------------------------------------------------------------- opcheck, errors
def _opcheck_cases():
    mean, var = statistics(torch.float32, c=6)
    w, b = param(torch.float16, 1, c=6), param(torch.float32, 2, c=6)
    invstd = P.bn_finalize(mean, var, None, None, 1e-5, 2, 0)[0]
    sums = torch.randn(3, 6, generator=gen(3))
    return [
        ("bn_finalize", (mean, var, w, b, 1e-5, 12, 3)),
        ("bn_finalize", (mean.double(), var.double(), None, None, 1e-5, 1, 0)),
        ("bn_backward_finalize", (sums, sums * 2, invstd, w, 12, 3, True)),
        ("bn_backward_finalize", (sums[0], sums[1], invstd, None, 12, 0, False)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_opcheck(index):
    name, args = _opcheck_cases()[index]
    torch.library.opcheck(getattr(OPS, name).default, args)


def _bad_inputs():
    mean, var = statistics(torch.float32, c=4)
    w = torch.ones(4)
    sums = torch.ones(2, 4)
    return {
        "mean rank": (lambda: OPS.bn_finalize(mean[None], var, w, w, 1e-5, 4, 0), "mean"),
        "mean dtype": (lambda: OPS.bn_finalize(mean.half(), var, w, w, 1e-5, 4, 0), "mean"),
        "var shape": (lambda: OPS.bn_finalize(mean, var[:3], w, w, 1e-5, 4, 0), "var"),
        "var dtype": (lambda: OPS.bn_finalize(mean, var.double(), w, w, 1e-5, 4, 0), "var"),
        "weight shape": (lambda: OPS.bn_finalize(mean, var, torch.ones(5), w, 1e-5, 4, 0), "weight"),
        "weight dtype": (lambda: OPS.bn_finalize(mean, var, torch.ones(4, dtype=torch.long), w, 1e-5, 4, 0),
                         "weight"),
        "bias shape": (lambda: OPS.bn_finalize(mean, var, w, torch.ones(2, 2), 1e-5, 4, 0), "bias"),
        "negative n": (lambda: OPS.bn_finalize(mean, var, w, w, 1e-5, 4, -1), "n"),
        "negative count": (lambda: OPS.bn_finalize(mean, var, w, w, 1e-5, -4, 0), "count"),
        "sum_dz columns": (lambda: OPS.bn_backward_finalize(torch.ones(2, 5), sums, w, w, 4, 0, True), "sum_dz"),
        "sum_dz_y rank": (lambda: OPS.bn_backward_finalize(sums, torch.ones(2, 2, 4), w, w, 4, 0, True),
                          "sum_dz_y"),
        "sum_dz dtype": (lambda: OPS.bn_backward_finalize(sums.double(), sums, w, w, 4, 0, True), "sum_dz"),
        "invstd dtype": (lambda: OPS.bn_backward_finalize(sums, sums, w.half(), w, 4, 0, True), "invstd"),
        "backward weight shape": (lambda: OPS.bn_backward_finalize(sums, sums, w, torch.ones(3), 4, 0, True),
                                  "weight"),
        "backward negative n": (lambda: OPS.bn_backward_finalize(sums, sums, w, w, 4, -2, True), "n"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_name_the_argument(case):
    call, name = _bad_inputs()[case]
    with pytest.raises(RuntimeError, match=rf"resnet_fast::bn_\w*finalize: .*\b{name}\b"):
        call()
