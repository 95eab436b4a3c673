"""The Triton finalize kernels (bn_finalize, bn_backward_finalize) against the reference primitives.

Run under TRITON_INTERPRET=1 on the CPU (tests/conftest.py sets it without a GPU); the
per-channel formulas are evaluated in the statistics' dtype in both, so float32 and float64
results agree to a few units in the last place (the reference's sums over samples use
torch.sum, the kernel a loop in order).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from resnet_fast import backend
from resnet_fast.ops import primitives as reference

pytestmark = pytest.mark.skipif(not backend.triton_status()[0], reason=backend.triton_status()[1])


def _triton():
    from resnet_fast.kernels import triton as kernels

    return kernels


def _close(got, want, dtype):
    tol = 8 * torch.finfo(dtype).eps
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c,n", [(1, 0), (5, 0), (9, 3), (16, 1)])
@pytest.mark.parametrize("affine", ["none", "weight_bias", "half_params"])
def test_bn_finalize(dtype, c, n, affine):
    g = torch.Generator().manual_seed(c * 10 + n)
    mean = torch.randn(c, generator=g, dtype=dtype)
    var = torch.rand(c, generator=g, dtype=dtype) * 3
    weight = bias = None
    if affine != "none":
        param_dtype = torch.float16 if affine == "half_params" else dtype
        weight = (torch.rand(c, generator=g) + 0.5).to(param_dtype)
        bias = torch.randn(c, generator=g).to(param_dtype)
    for count in (1, 2, 1000):
        got = _triton().bn_finalize(mean, var, weight, bias, 1e-5, count, n)
        want = reference.bn_finalize(mean, var, weight, bias, 1e-5, count, n)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows_dz,rows_dz_y,n", [(3, 3, 3), (0, 0, 0), (4, 0, 0), (2, 2, 0)])
@pytest.mark.parametrize("use_batch_stats,with_weight", list(itertools.product([True, False], [True, False])))
def test_bn_backward_finalize(dtype, rows_dz, rows_dz_y, n, use_batch_stats, with_weight):
    c = 7
    g = torch.Generator().manual_seed(rows_dz + 3 * rows_dz_y + n)
    sum_dz = torch.randn((rows_dz, c) if rows_dz else (c,), generator=g, dtype=dtype)
    sum_dz_y = torch.randn((rows_dz_y, c) if rows_dz_y else (c,), generator=g, dtype=dtype)
    invstd = torch.rand(c, generator=g, dtype=dtype) + 0.5
    weight = torch.rand(c, generator=g, dtype=torch.float32) + 0.5 if with_weight else None
    got = _triton().bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, 37, n, use_batch_stats)
    want = reference.bn_backward_finalize(sum_dz, sum_dz_y, invstd, weight, 37, n, use_batch_stats)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        _close(a, b, dtype)


def test_bad_inputs_name_the_argument():
    kernels = _triton()
    mean, var = torch.zeros(4), torch.ones(4)
    with pytest.raises(RuntimeError, match="var"):
        kernels.bn_finalize(mean, torch.ones(5), None, None, 1e-5, 8, 0)
    with pytest.raises(RuntimeError, match="weight"):
        kernels.bn_finalize(mean, var, torch.ones(3), None, 1e-5, 8, 0)
    with pytest.raises(RuntimeError, match="statistics must be float32 or float64"):
        kernels.bn_finalize(mean.half(), var.half(), None, None, 1e-5, 8, 0)
    with pytest.raises(RuntimeError, match="sum_dz_y"):
        kernels.bn_backward_finalize(torch.zeros(2, 4), torch.zeros(2, 5), torch.ones(4), None, 8, 2, True)
    with pytest.raises(RuntimeError, match="n must be >= 0"):
        kernels.bn_backward_finalize(torch.zeros(4), torch.zeros(4), torch.ones(4), None, 8, -1, True)
