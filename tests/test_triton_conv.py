"""The fused-convolution Triton kernels (resnet_fast/kernels/triton/conv) against the eager composition.

Without a CUDA device the kernels run on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1,
set below before triton is imported): tiny shapes, whose interpreter tiles (32 rows x 16 channels,
16-channel reduction steps; wgrad 16 x 16 x 16 with up to three row splits) still give several row
tiles with a tail, channel tails (C = 8, 24, 40) on both GEMM axes and multi-split reductions.

References: F.conv2d, F.batch_norm, relu and torch.autograd in float64 on the same rounded inputs the
kernels see (a prologue rounds the BN-ReLU activation, or the BN gradient, to the activation dtype
before the product, as a materialized tensor would be: the reference rounds it the same way).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

from resnet_fast.kernels.triton.conv import (conv_dgrad, conv_forward, conv_wgrad,  # noqa: E402
                                             merge_sum_partials, merge_welford_partials)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
EPS = 1e-5
DTYPES = [torch.float32, torch.float16]

# Convolution outputs: both sides multiply the same operands and accumulate in fp32 (fp64 reference), so
# they differ by summation order (fp32: ~1e-6 of the output scale) plus, in fp16, one rounding of the output
# (2^-11 relative) and of the rounded prologue operand where the two straddle a rounding boundary.
# atol is relative to the output's magnitude (max |ref|).
CONV_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# Statistics and partial sums: fp32 accumulation of the kernel's own stored values on both sides, only the
# order differs.
SUM_TOL = dict(rtol=1e-5, atol=1e-5)

# (kernel, stride, N, C_in, H, W, C_out): channel tails 8, 24, 40; row tails; batches 1-3; odd sizes.
GEOMETRIES = [
    (1, 1, 2, 24, 5, 5, 40),
    (1, 2, 1, 40, 7, 6, 24),
    (3, 1, 3, 8, 4, 5, 24),
    (3, 1, 1, 24, 6, 6, 8),
    (3, 2, 2, 40, 7, 5, 16),
]
IDS = [f"{k}x{k}s{s}-n{n}c{ci}-{h}x{w}-k{co}" for k, s, n, ci, h, w, co in GEOMETRIES]


# ----------------------------------------------------------------------------- helpers
def randn(*shape, seed, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset


def act(t, dtype):
    """A channels_last activation of ``dtype`` on the test device."""
    return t.to(device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)


def vec(t):
    return t.to(device=DEVICE, dtype=torch.float32)


def f64(t):
    return t.detach().to(device="cpu", dtype=torch.float64)


def bn_scale_shift(x, gamma, beta):
    """(mean, var, scale, shift) of a training-mode BN over x's (N, H, W), fp32: what bn_finalize returns."""
    xd = f64(x)
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3), unbiased=False)
    scale = gamma / torch.sqrt(var + EPS)
    return vec(mean), vec(var), vec(scale), vec(beta - mean * scale)


def producer_bn(c, seed):
    """gamma, beta whose shifts have both signs (relu(shift) > 0 would leak into zero padding)."""
    gamma = randn(c, seed=seed).abs() + 0.5
    beta = randn(c, seed=seed + 1) * 0.8
    return gamma, beta


def bn_relu(x, scale, shift, dtype):
    """relu(x * scale + shift) in fp64, rounded to ``dtype`` as the prologue rounds it."""
    return torch.relu(f64(x) * f64(scale)[:, None, None] + f64(shift)[:, None, None]).to(dtype).double()


def assert_close_scaled(out, ref, tol, what):
    out, ref = f64(out), f64(ref)
    scale = ref.abs().max().item() + 1e-12
    err = (out - ref).abs().max().item() / scale
    assert err <= tol, f"{what}: max error {err:.3g} of the output scale {scale:.3g} (tolerance {tol:.1g})"


def bn_coefficients(y, dz, gamma, mean, var):
    """A, B, C of dy = A * dz + B * y + C (BN backward), and (dgamma, dbeta), from plain torch in fp64."""
    y, dz, mean = f64(y), f64(dz), f64(mean)
    invstd = 1.0 / torch.sqrt(f64(var) + EPS)
    m = y.numel() // y.shape[1]
    xhat = (y - mean[:, None, None]) * invstd[:, None, None]
    dgamma, dbeta = (dz * xhat).sum((0, 2, 3)), dz.sum((0, 2, 3))
    a = gamma * invstd
    b = -a * invstd * dgamma / m
    c = -a * dbeta / m - b * mean
    return vec(a), vec(b), vec(c), dgamma, dbeta


def case(geometry, dtype, seed=0):
    k, stride, n, c_in, h, w, c_out = geometry
    x = act(randn(n, c_in, h, w, seed=seed, scale=1.5, offset=0.3), dtype)
    weight = act(randn(c_out, c_in, k, k, seed=seed + 1) / (c_in * k * k) ** 0.5, dtype)
    return x, weight, stride, (k - 1) // 2


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prologue", [False, True], ids=["plain", "bn_relu"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_forward(geometry, prologue, dtype):
    x, weight, stride, pad = case(geometry, dtype)
    scale = shift = None
    a = f64(x)
    if prologue:
        gamma, beta = producer_bn(x.shape[1], seed=7)
        _, _, scale, shift = bn_scale_shift(x, gamma, beta)
        assert (shift > 0).any() and (shift < 0).any()
        ref_bn = F.batch_norm(f64(x), None, None, gamma, beta, training=True, eps=EPS)
        a = torch.relu(ref_bn).to(dtype).double()  # the eager composition, rounded as the prologue rounds
    y, mean, var = conv_forward(x, weight, stride, pad, scale=scale, shift=shift)
    ref = F.conv2d(a, f64(weight), stride=stride, padding=pad)
    assert y.dtype == dtype and y.shape == ref.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_scaled(y, ref, CONV_TOL[dtype], "y")
    # statistics of the stored (rounded) y
    yd = f64(y)
    torch.testing.assert_close(f64(mean), yd.mean((0, 2, 3)), **SUM_TOL)
    torch.testing.assert_close(f64(var), yd.var((0, 2, 3), unbiased=False), **SUM_TOL)


def test_forward_padding_is_zero_after_the_affine():
    """A positive shift with a zero scale: every in-range tap gives relu(shift) > 0, padded taps must give 0."""
    x = act(randn(1, 8, 3, 3, seed=3), torch.float32)
    weight = act(torch.ones(4, 8, 3, 3, dtype=torch.float64), torch.float32)
    scale, shift = vec(torch.zeros(8)), vec(torch.ones(8))
    y, _, _ = conv_forward(x, weight, 1, 1, scale=scale, shift=shift)
    taps = F.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64),
                    padding=1)  # in-range taps per output pixel: 4 at corners, 6 at edges, 9 inside
    torch.testing.assert_close(f64(y), (8 * taps).expand(1, 4, 3, 3))


def test_forward_bfloat16():
    """bf16 through the interpreter's upcast path (a GPU checks the tensor-core path)."""
    geometry = GEOMETRIES[2]
    x, weight, stride, pad = case(geometry, torch.bfloat16)
    gamma, beta = producer_bn(x.shape[1], seed=7)
    _, _, scale, shift = bn_scale_shift(x, gamma, beta)
    y, mean, var = conv_forward(x, weight, stride, pad, scale=scale, shift=shift)
    ref = F.conv2d(bn_relu(x, scale, shift, torch.bfloat16), f64(weight), stride=stride, padding=pad)
    assert_close_scaled(y, ref, CONV_TOL[torch.bfloat16], "y")
    torch.testing.assert_close(f64(mean), f64(y).mean((0, 2, 3)), **SUM_TOL)


def test_welford_merge_large_offset():
    """Centered merges keep the variance of values far from zero (a sum of squares in fp32 would not)."""
    g = torch.Generator().manual_seed(0)
    rows, tile = 1000, 32
    values = (torch.randn(rows, 3, generator=g, dtype=torch.float64) * 0.01 + 1000.0).float()
    tiles = -(-rows // tile)
    pad = torch.nn.functional.pad(values.double(), (0, 0, 0, tiles * tile - rows), value=float("nan"))
    pieces = pad.reshape(tiles, tile, 3)
    part_mean = torch.nanmean(pieces, 1)
    part_m2 = torch.nansum((pieces - part_mean[:, None]) ** 2, 1)
    mean, var = merge_welford_partials(vec(part_mean), vec(part_m2), rows, tile)
    ref = values.double()
    torch.testing.assert_close(f64(mean), ref.mean(0), rtol=1e-7, atol=0)
    torch.testing.assert_close(f64(var), ref.var(0, unbiased=False), rtol=1e-3, atol=0)


def test_sum_merge():
    parts = vec(randn(7, 40, seed=1)), vec(randn(7, 40, seed=2))
    sums = merge_sum_partials(*parts)
    for s, p in zip(sums, parts):
        torch.testing.assert_close(f64(s), f64(p).sum(0), **SUM_TOL)


# ----------------------------------------------------------------------------- dgrad
def dgrad_case(geometry, dtype, bn, producer):
    """Inputs of conv_dgrad and the eager reference (autograd through BN, conv2d and the producer's BN+ReLU)."""
    x_prev, weight, stride, pad = case(geometry, dtype)
    n, c_in, h, w = x_prev.shape
    c_out = weight.shape[0]
    gamma_p, beta_p = producer_bn(c_in, seed=7)
    mean_p, var_p, scale_p, shift_p = bn_scale_shift(x_prev, gamma_p, beta_p)
    a = bn_relu(x_prev, scale_p, shift_p, dtype) if producer else f64(x_prev)
    y = act(F.conv2d(a, f64(weight), stride=stride, padding=pad), dtype)  # the stored forward output
    dz = act(randn(*y.shape, seed=11), dtype)
    kwargs, dy = {}, f64(dz)
    if bn:
        gamma = randn(c_out, seed=12).abs() + 0.5
        mean, var = f64(y).mean((0, 2, 3)), f64(y).var((0, 2, 3), unbiased=False)
        coef_a, coef_b, coef_c, _, _ = bn_coefficients(y, dz, gamma, mean, var)
        kwargs.update(y=y, coef_a=coef_a, coef_b=coef_b, coef_c=coef_c)
        # the eager BN backward (autograd) at y; the coefficients must reproduce it
        y_leaf = f64(y).requires_grad_(True)
        z = F.batch_norm(y_leaf, None, None, gamma, torch.zeros(c_out, dtype=torch.float64), training=True, eps=EPS)
        (dy,) = torch.autograd.grad(z, y_leaf, f64(dz))
        formed = f64(coef_a)[:, None, None] * f64(dz) + f64(coef_b)[:, None, None] * f64(y) + f64(coef_c)[:, None,
                                                                                                       None]
        torch.testing.assert_close(formed, dy, rtol=1e-5, atol=1e-5 * dy.abs().max().item())
        dy = dy.to(dtype).double()  # the prologue rounds dy to the activation dtype
    if producer:
        kwargs.update(x_prev=x_prev, scale_prev=scale_p, shift_prev=shift_p, mean_prev=mean_p)
    # eager: gradient at the producer BN's output through conv2d and relu
    z_prev = (f64(x_prev) * f64(scale_p)[:, None, None] + f64(shift_p)[:, None, None]).requires_grad_(True)
    a_ref = torch.relu(z_prev) if producer else z_prev
    out = F.conv2d(a_ref, f64(weight), stride=stride, padding=pad)
    (ref,) = torch.autograd.grad(out, z_prev, dy)
    return dz, weight, (h, w), stride, pad, kwargs, ref, mean_p


# Both ends fused (the middle conv of a bottleneck) and neither, on every geometry; one-sided (conv1 of a block:
# no producer BN; a conv under today's BN path: no BN prologue) on one 1x1 and one 3x3 stride-2 geometry.
DGRAD_CASES = ([(g, True, True) for g in GEOMETRIES] + [(g, False, False) for g in GEOMETRIES]
               + [(g, bn, not bn) for g in (GEOMETRIES[0], GEOMETRIES[4]) for bn in (True, False)])
DGRAD_IDS = [f"{IDS[GEOMETRIES.index(g)]}-{'bn' if bn else 'nobn'}-{'producer' if p else 'noproducer'}"
             for g, bn, p in DGRAD_CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry,bn,producer", DGRAD_CASES, ids=DGRAD_IDS)
def test_dgrad(geometry, bn, producer, dtype):
    dz, weight, size, stride, pad, kwargs, ref, mean_p = dgrad_case(geometry, dtype, bn, producer)
    g, sum_g, sum_gx = conv_dgrad(dz, weight, size, stride, pad, **kwargs)
    assert g.dtype == dtype and g.shape == ref.shape
    assert g.is_contiguous(memory_format=torch.channels_last)
    assert_close_scaled(g, ref, CONV_TOL[dtype], "g")
    if not producer:
        assert sum_g is None and sum_gx is None
        return
    gd = f64(g)  # the partial sums are of the stored g
    torch.testing.assert_close(f64(sum_g), gd.sum((0, 2, 3)), **SUM_TOL)
    xc = f64(kwargs["x_prev"]) - f64(mean_p)[:, None, None]
    torch.testing.assert_close(f64(sum_gx), (gd * xc).sum((0, 2, 3)), **SUM_TOL)


# ----------------------------------------------------------------------------- wgrad
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["recompute", "plain"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_wgrad(geometry, fused, dtype):
    x, weight, stride, pad = case(geometry, dtype)
    c_in, c_out = x.shape[1], weight.shape[0]
    kwargs, a = {}, f64(x)
    if fused:
        gamma_p, beta_p = producer_bn(c_in, seed=7)
        _, _, scale, shift = bn_scale_shift(x, gamma_p, beta_p)
        kwargs.update(scale=scale, shift=shift)
        a = bn_relu(x, scale, shift, dtype)
    y = act(F.conv2d(a, f64(weight), stride=stride, padding=pad), dtype)
    dz = act(randn(*y.shape, seed=11), dtype)
    dy = f64(dz)
    if fused:
        gamma = randn(c_out, seed=12).abs() + 0.5
        coef_a, coef_b, coef_c, _, _ = bn_coefficients(y, dz, gamma, f64(y).mean((0, 2, 3)),
                                                        f64(y).var((0, 2, 3), unbiased=False))
        kwargs.update(y=y, coef_a=coef_a, coef_b=coef_b, coef_c=coef_c)
        dy = (f64(coef_a)[:, None, None] * f64(dz) + f64(coef_b)[:, None, None] * f64(y)
              + f64(coef_c)[:, None, None]).to(dtype).double()
    dw = conv_wgrad(x, dz, tuple(weight.shape), stride, pad, out_dtype=torch.float32, **kwargs)
    w_leaf = f64(weight).requires_grad_(True)
    (ref,) = torch.autograd.grad(F.conv2d(a, w_leaf, stride=stride, padding=pad), w_leaf, dy)
    assert dw.shape == ref.shape and dw.dtype == torch.float32
    # dW sums M products: fp32 partials on both sides, the operands identical (rounded the same way)
    assert_close_scaled(dw, ref, 1e-5 if dtype == torch.float32 else 1e-4, "dW")


# ----------------------------------------------------------------------------- chain
def run_chain(x, w1, w2, w3, bns, dz3):
    """conv1(1x1) -> [bn1+relu prologue] conv2(3x3, stride 2) -> [bn2+relu prologue] conv3(1x1), forward and
    backward through the kernels; the per-channel algebra (bn_finalize, dBN finalize) in plain torch."""
    (g1, b1), (g2, b2) = bns
    y1, m1, v1 = conv_forward(x, w1)
    inv1 = 1.0 / torch.sqrt(v1 + EPS)
    s1, t1 = g1 * inv1, b1 - m1 * g1 * inv1
    y2, m2, v2 = conv_forward(y1, w2, 2, 1, scale=s1, shift=t1)
    inv2 = 1.0 / torch.sqrt(v2 + EPS)
    s2, t2 = g2 * inv2, b2 - m2 * g2 * inv2
    y3, m3, v3 = conv_forward(y2, w3, scale=s2, shift=t2)
    # backward: dz3 is the gradient at y3 (bn3 + tail run today's path)
    gz2, sg2, sgx2 = conv_dgrad(dz3, w3, y2.shape[2:], x_prev=y2, scale_prev=s2, shift_prev=t2, mean_prev=m2)
    dw3 = conv_wgrad(y2, dz3, tuple(w3.shape), scale=s2, shift=t2, out_dtype=torch.float32)
    count2 = y2.numel() // y2.shape[1]
    dgamma2, dbeta2 = sgx2 * inv2, sg2
    a2 = g2 * inv2
    bb2 = -a2 * inv2 * dgamma2 / count2
    c2 = -a2 * dbeta2 / count2 - bb2 * m2
    gz1, sg1, sgx1 = conv_dgrad(gz2, w2, y1.shape[2:], 2, 1, y=y2, coef_a=a2, coef_b=bb2, coef_c=c2,
                                x_prev=y1, scale_prev=s1, shift_prev=t1, mean_prev=m1)
    dw2 = conv_wgrad(y1, gz2, tuple(w2.shape), 2, 1, scale=s1, shift=t1, y=y2, coef_a=a2, coef_b=bb2, coef_c=c2,
                     out_dtype=torch.float32)
    count1 = y1.numel() // y1.shape[1]
    dgamma1, dbeta1 = sgx1 * inv1, sg1
    a1 = g1 * inv1
    bb1 = -a1 * inv1 * dgamma1 / count1
    c1 = -a1 * dbeta1 / count1 - bb1 * m1
    dx, _, _ = conv_dgrad(gz1, w1, x.shape[2:], y=y1, coef_a=a1, coef_b=bb1, coef_c=c1)
    dw1 = conv_wgrad(x, gz1, tuple(w1.shape), y=y1, coef_a=a1, coef_b=bb1, coef_c=c1, out_dtype=torch.float32)
    return dict(y3=y3, mean3=m3, var3=v3, dx=dx, dw1=dw1, dw2=dw2, dw3=dw3, dgamma1=dgamma1, dbeta1=dbeta1,
                dgamma2=dgamma2, dbeta2=dbeta2)


def chain_inputs(dtype):
    n, c0, c1, c2, c3, h, w = 2, 24, 8, 24, 40, 6, 5
    x = act(torch.relu(randn(n, c0, h, w, seed=0)), dtype)  # a block input is a ReLU output
    w1 = act(randn(c1, c0, 1, 1, seed=1) / c0 ** 0.5, dtype)
    w2 = act(randn(c2, c1, 3, 3, seed=2) / (9 * c1) ** 0.5, dtype)
    w3 = act(randn(c3, c2, 1, 1, seed=3) / c2 ** 0.5, dtype)
    bns = [(vec(randn(c, seed=10 + c).abs() + 0.5), vec(randn(c, seed=20 + c) * 0.8)) for c in (c1, c2)]
    return x, w1, w2, w3, bns


# The chain against fp64 autograd of the eager fp32 composition. fp32: the kernels differ from it by
# summation order only. fp16: every stored tensor (y1, y2, y3, the BN-ReLU activations, the gradients) is
# rounded to fp16 (2^-11) and the errors compound through 3 convolutions and 2 BN backward passes.
CHAIN_TOL = {torch.float32: 1e-4, torch.float16: 3e-2}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_chain_forward_backward(dtype):
    x, w1, w2, w3, bns = chain_inputs(dtype)
    n = x.shape[0]
    dz3 = act(randn(n, w3.shape[0], 3, 3, seed=30), dtype)
    out = run_chain(x, w1, w2, w3, bns, dz3)

    leaves = [f64(t).requires_grad_(True) for t in (x, w1, w2, w3)]
    gb = [f64(t).requires_grad_(True) for pair in bns for t in pair]
    xr, w1r, w2r, w3r = leaves
    z1 = F.relu(F.batch_norm(F.conv2d(xr, w1r), None, None, gb[0], gb[1], training=True, eps=EPS))
    z2 = F.relu(F.batch_norm(F.conv2d(z1, w2r, stride=2, padding=1), None, None, gb[2], gb[3], training=True,
                             eps=EPS))
    y3 = F.conv2d(z2, w3r)
    grads = torch.autograd.grad(y3, leaves + gb, f64(dz3))
    tol = CHAIN_TOL[dtype]
    assert_close_scaled(out["y3"], y3, tol, "y3")
    torch.testing.assert_close(f64(out["mean3"]), f64(out["y3"]).mean((0, 2, 3)), **SUM_TOL)
    torch.testing.assert_close(f64(out["var3"]), f64(out["y3"]).var((0, 2, 3), unbiased=False), **SUM_TOL)
    names = ["dx", "dw1", "dw2", "dw3", "dgamma1", "dbeta1", "dgamma2", "dbeta2"]
    for name, ref in zip(names, grads):
        assert_close_scaled(out[name], ref, tol, name)


def test_bitwise_repeatable():
    x, w1, w2, w3, bns = chain_inputs(torch.float16)
    dz3 = act(randn(x.shape[0], w3.shape[0], 3, 3, seed=30), torch.float16)
    first = run_chain(x, w1, w2, w3, bns, dz3)
    second = run_chain(x, w1, w2, w3, bns, dz3)
    for name in first:
        assert torch.equal(first[name], second[name]), name


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    x, weight, _, _ = case(GEOMETRIES[2], torch.float32)  # 3x3, C_in 8, C_out 24
    c_in = x.shape[1]
    ok_vec = vec(torch.ones(c_in))

    def raises(match, fn):
        with pytest.raises((RuntimeError, ValueError), match=match):
            fn()

    raises("x to be 4-D", lambda: conv_forward(x[0], weight, 1, 1))
    raises("x must be float16, bfloat16 or float32", lambda: conv_forward(x.double(), weight.double(), 1, 1))
    raises("x must be channels_last", lambda: conv_forward(x.contiguous(), weight, 1, 1))
    raises("weight has dtype", lambda: conv_forward(x, weight.half(), 1, 1))
    raises("weight has 4 input channels.*groups = 2", lambda: conv_forward(x, weight[:, :4].contiguous(), 1, 1))
    raises("kernel size 5x5", lambda: conv_forward(x, torch.zeros(4, c_in, 5, 5), 1, 2))
    raises("stride 3", lambda: conv_forward(x, weight, 3, 1))
    raises("padding 0 is not supported for a 3x3", lambda: conv_forward(x, weight, 1, 0))
    raises("scale and shift", lambda: conv_forward(x, weight, 1, 1, scale=ok_vec))
    raises(r"scale must have shape \(8,\)", lambda: conv_forward(x, weight, 1, 1, scale=vec(torch.ones(3)),
                                                                 shift=ok_vec))
    raises("shift must be float32", lambda: conv_forward(x, weight, 1, 1, scale=ok_vec, shift=ok_vec.double()))
    if not CUDA:
        raises("device|CUDA", lambda: conv_forward(x.to("meta"), weight.to("meta"), 1, 1))
    dz = act(torch.zeros(x.shape[0], 24, 4, 5), torch.float32)
    raises("dz has shape", lambda: conv_dgrad(dz, weight, (4, 6), 1, 1))
    raises("all of y, coef_a", lambda: conv_dgrad(dz, weight, (4, 5), 1, 1, y=dz))
    raises("all of x_prev", lambda: conv_dgrad(dz, weight, (4, 5), 1, 1, x_prev=x))
    raises("x_prev has dtype", lambda: conv_dgrad(dz, weight, (4, 5), 1, 1, x_prev=x.half(), scale_prev=ok_vec,
                                                  shift_prev=ok_vec, mean_prev=ok_vec))
    raises(r"coef_b must have shape \(24,\)", lambda: conv_dgrad(dz, weight, (4, 5), 1, 1, y=dz, coef_a=vec(
        torch.ones(24)), coef_b=ok_vec, coef_c=vec(torch.ones(24))))
    raises("dz has dtype", lambda: conv_wgrad(x, dz.half(), tuple(weight.shape), 1, 1))
    raises("dz has shape", lambda: conv_wgrad(x, dz, (24, c_in, 3, 3), 2, 1))
    raises("out_dtype", lambda: conv_wgrad(x, dz, tuple(weight.shape), 1, 1, out_dtype=torch.int32))
