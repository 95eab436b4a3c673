"""The Triton primitives against the torch reference (resnet_fast/ops/primitives.py).

Without a CUDA device the kernels run on CPU tensors under the Triton interpreter
(TRITON_INTERPRET=1, set below before triton is imported): tiny shapes only, whose
interpreter tiles (8 x 4 or 8 x 8) and H*W splits (8 positions) still give several blocks, masked
tails and multi-split merges. With a GPU the same tests also run at ResNet-like shapes.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch.nn.functional as F  # noqa: E402

import resnet_fast  # noqa: E402
from resnet_fast.kernels import triton as kernels  # noqa: E402
from resnet_fast.ops import primitives as reference  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (2,3,4,5): C < tile; (1,8,3,3): N=1, two full channel tiles; (2,10,2,6): channel tail, 2 splits;
# (3,5,2,3): odd N (merge tail), one split with a tail tile.
SHAPES = [(2, 3, 4, 5), (1, 8, 3, 3), (2, 10, 2, 6), (3, 5, 2, 3)]
if CUDA:  # ResNet-50 stage shapes (smaller batch) and an odd one
    SHAPES += [(8, 64, 56, 56), (8, 256, 14, 14), (4, 2048, 7, 7), (3, 77, 13, 11)]
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}

# Elementwise outputs: kernel and reference both compute in the accumulation dtype and round once to the
# output dtype, so they differ by op order (fp32: a few ulps) and, for fp16/bf16, by at most one ulp of the
# output where the two fp32 values straddle a rounding boundary. The interpreter also truncates fp32 -> bf16
# (triton/runtime/interpreter.py, cast_impl) where the GPU rounds to nearest even: again at most one bf16
# ulp, 2^-7 relative. atol covers results near zero.
OUT_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=2 ** -10, atol=1e-4),
    torch.bfloat16: dict(rtol=2 ** -7, atol=1e-3),
}
# Statistics and sums are accumulated in fp32 (fp64 for fp64) on both sides from the same inputs, whatever
# the input dtype: only summation order differs. On GPU the sums run over up to 25k values (sqrt growth).
SUM_TOL = dict(rtol=1e-5, atol=1e-5) if not CUDA else dict(rtol=1e-4, atol=1e-3)
SUM_TOL64 = dict(rtol=1e-12, atol=1e-12)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def sum_tol(dtype):
    return SUM_TOL64 if dtype == torch.float64 else SUM_TOL


def make(shape, dtype, layout, scale=1.0, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    return t.to(device=DEVICE, dtype=dtype).contiguous(memory_format=LAYOUTS[layout])


def vec(*shape, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    t = t.abs() + 0.25 if positive else t
    return t.to(device=DEVICE, dtype=torch.float32)


def inputs(shape, dtype, layout, residual, seed=0):
    """Forward arguments (y, scale, shift, residual, res_scale, res_shift); residual in None/'plain'/'affine'."""
    n, c = shape[:2]
    acc = reference.acc_dtype(dtype)
    y = make(shape, dtype, layout, scale=2.0, offset=0.5, seed=seed)
    scale, shift = vec(n, c, seed=seed + 1).to(acc), vec(n, c, seed=seed + 2).to(acc)
    res = make(shape, dtype, layout, seed=seed + 3) if residual else None
    res_scale = vec(c, seed=seed + 4).to(acc) if residual == "affine" else None
    res_shift = vec(c, seed=seed + 5).to(acc) if residual == "affine" else None
    return y, scale, shift, res, res_scale, res_shift


def grad_away_from_kink(shape, dtype, layout, fwd, seed=7):
    """dout, zero where |z| is tiny: there an fma-contracted z may take the other side of the ReLU than torch's."""
    z = reference._pre_activation(*fwd)
    dout = make(shape, dtype, layout, seed=seed)
    return torch.where(z.abs() < 1e-3, torch.zeros_like(dout), dout).contiguous(memory_format=LAYOUTS[layout])


def assert_same(actual, expected, tol):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.dim() == 4 and actual.numel() > 0:
        assert actual.stride() == expected.stride(), "output must keep y's memory format"
    torch.testing.assert_close(actual.cpu(), expected.cpu(), **tol)


# ----------------------------------------------------------------------------- bn_stats
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bn_stats(shape, layout, dtype):
    y = make(shape, dtype, layout, scale=3.0, offset=1.0)
    for got, want in zip(kernels.bn_stats(y), reference.bn_stats(y)):
        assert_same(got, want, sum_tol(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bn_stats_large_mean(layout):
    """|mean| / std = 1e4: Welford/Chan keeps the variance where fp32 sum-of-squares cancels to noise.

    fp32 itself resolves values near 1000 to ulp(1000) = 6e-5, 6e-4 of a standard deviation, so
    piece means merged in fp32 carry errors of that order: rtol 1e-3 on the variance (the naive
    formula is off by over 100 %), a few fp32 ulps on the means.
    """
    shape = (3, 5, 6, 7)
    y = make(shape, torch.float32, layout, scale=0.1, offset=1000.0, seed=3)
    mean, var, sample_mean = kernels.bn_stats(y)
    y64 = y.double()
    var64, mean64 = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=5e-7, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=1e-3, atol=0)
    torch.testing.assert_close(sample_mean.double(), y64.mean(dim=(2, 3)), rtol=5e-7, atol=0)
    # What the test guards against: the naive fp32 formula is off by far more.
    naive = (y * y).mean(dim=(0, 2, 3)) - y.mean(dim=(0, 2, 3)) ** 2
    assert ((naive.double() - var64).abs() / var64).max() > 1.0


@pytest.mark.filterwarnings("ignore:var_mean")
def test_bn_stats_empty():
    y = torch.empty((0, 3, 2, 2), device=DEVICE)
    mean, var, sample_mean = kernels.bn_stats(y)
    assert mean.shape == (3,) and var.shape == (3,) and sample_mean.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reductions_over_many_sample_blocks(layout, dtype):
    """N = 7: under the interpreter's merge tiles (2 samples per program, 2 sample blocks per combine step)
    four sample blocks, the last one short, merged in two steps; the residual sums likewise."""
    shape = (7, 5, 2, 3)
    y = make(shape, dtype, layout, scale=3.0, offset=1.0)
    for got, want in zip(kernels.bn_stats(y), reference.bn_stats(y)):
        assert_same(got, want, sum_tol(dtype))
    check_backward_reduce(shape, layout, dtype, all_options=False)


# ----------------------------------------------------------------------------- scale_shift_act
RESIDUALS = [None, "plain", "affine"]
OPTIONS_SHAPE = SHAPES[2]  # (2, 10, 2, 6): channel and hw tails, two H*W splits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_shift_act(shape, layout, dtype):
    """Every shape, layout and dtype with every optional input present (BN'd residual, relu)."""
    fwd = inputs(shape, dtype, layout, "affine")
    assert_same(kernels.scale_shift_act(*fwd, True), reference.scale_shift_act(*fwd, True), OUT_TOL[dtype])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_shift_act_options(layout):
    """Every optional-argument combination, at the shape with tails along both tile axes."""
    shape, dtype = OPTIONS_SHAPE, torch.float32
    for residual in RESIDUALS:
        for relu in (False, True):
            fwd = inputs(shape, dtype, layout, residual)
            assert_same(kernels.scale_shift_act(*fwd, relu), reference.scale_shift_act(*fwd, relu), OUT_TOL[dtype])


def test_scale_shift_act_float64_and_mixed_layouts():
    """fp64 accumulates in fp64; a residual in the other layout than y is read through its own strides."""
    shape = SHAPES[2]
    for dtype in (torch.float64, torch.float32):
        y, scale, shift, _, res_scale, res_shift = inputs(shape, dtype, "nhwc", "affine")
        res = make(shape, dtype, "nchw", seed=11)
        for rs, rb in ((None, None), (res_scale, res_shift)):
            args = (y, scale, shift, res, rs, rb, True)
            assert_same(kernels.scale_shift_act(*args), reference.scale_shift_act(*args), OUT_TOL[dtype])


# ----------------------------------------------------------------------------- backward
def backward_cases(shape, dtype, layout, all_options):
    """(forward args, relu, res_center, res coefficients or None): every optional-argument combination, or
    only the one with every optional input present (BN'd residual, relu, residual gradients)."""
    c = shape[1]
    acc = reference.acc_dtype(dtype)
    for residual in (RESIDUALS if all_options else ["affine"]):
        for relu in ((False, True) if all_options else (True,)):
            for with_res in (((False, True) if all_options else (True,)) if residual else (False,)):
                fwd = inputs(shape, dtype, layout, residual)
                res_center = fwd[3].to(acc).mean(dim=(0, 2, 3)) if with_res else None
                res_k = (vec(c, seed=21).to(acc), vec(c, seed=22).to(acc), vec(c, seed=23).to(acc),
                         res_center) if with_res else (None,) * 4
                yield fwd, relu, res_center, res_k


def check_backward_reduce(shape, layout, dtype, all_options):
    acc = reference.acc_dtype(dtype)
    for fwd, relu, res_center, _ in backward_cases(shape, dtype, layout, all_options):
        dout = grad_away_from_kink(shape, dtype, layout, fwd)
        center = fwd[0].to(acc).mean(dim=(0, 2, 3))
        args = (dout, *fwd, relu, center, res_center)
        for got, want in zip(kernels.scale_shift_act_backward_reduce(*args),
                             reference.scale_shift_act_backward_reduce(*args)):
            assert_same(got, want, sum_tol(dtype))


def check_backward_apply(shape, layout, dtype, all_options):
    n, c = shape[:2]
    acc = reference.acc_dtype(dtype)
    k = (vec(n, c, seed=31).to(acc), vec(n, c, seed=32).to(acc), vec(c, seed=33).to(acc), vec(c, seed=34).to(acc))
    for fwd, relu, _, res_k in backward_cases(shape, dtype, layout, all_options):
        dout = grad_away_from_kink(shape, dtype, layout, fwd)
        args = (dout, *fwd, relu, *k, *res_k)
        grad_y, grad_res = kernels.scale_shift_act_backward_apply(*args)
        want_y, want_res = reference.scale_shift_act_backward_apply(*args)
        assert_same(grad_y, want_y, OUT_TOL[dtype])
        assert_same(grad_res, want_res, OUT_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_shift_act_backward_reduce(shape, layout, dtype):
    check_backward_reduce(shape, layout, dtype, all_options=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_shift_act_backward_reduce_options(layout):
    check_backward_reduce(OPTIONS_SHAPE, layout, torch.float32, all_options=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_shift_act_backward_apply(shape, layout, dtype):
    check_backward_apply(shape, layout, dtype, all_options=False)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_shift_act_backward_apply_options(layout):
    check_backward_apply(OPTIONS_SHAPE, layout, torch.float32, all_options=True)


def test_backward_mixed_layouts():
    """dout and residual in another layout than y: read through their own strides, outputs in y's layout."""
    shape, dtype = SHAPES[2], torch.float32
    fwd = inputs(shape, dtype, "nhwc", "affine")
    fwd = (fwd[0], fwd[1], fwd[2], fwd[3].contiguous(), fwd[4], fwd[5])
    dout = grad_away_from_kink(shape, dtype, "nchw", fwd)
    center, res_center = fwd[0].mean(dim=(0, 2, 3)), fwd[3].mean(dim=(0, 2, 3))
    args = (dout, *fwd, True, center, res_center)
    for got, want in zip(kernels.scale_shift_act_backward_reduce(*args),
                         reference.scale_shift_act_backward_reduce(*args)):
        assert_same(got, want, SUM_TOL)
    n, c = shape[:2]
    k = (vec(n, c, seed=1), vec(n, c, seed=2), vec(c, seed=3), center, vec(c, seed=4), vec(c, seed=5), vec(c, seed=6),
         res_center)
    args = (dout, *fwd, True, *k)
    for got, want in zip(kernels.scale_shift_act_backward_apply(*args),
                         reference.scale_shift_act_backward_apply(*args)):
        assert_same(got, want, OUT_TOL[dtype])


# ----------------------------------------------------------------------------- end to end
def test_bn_relu_through_triton_backend():
    """resnet_fast.ops.bn_relu on the "triton" backend equals relu(batch_norm(x)), forward and backward."""
    shape = (2, 6, 3, 5)
    x = make(shape, torch.float32, "nhwc", scale=2.0, offset=0.5).requires_grad_()
    weight = vec(6, seed=1, positive=True).requires_grad_()
    bias = vec(6, seed=2).requires_grad_()
    rm, rv = torch.zeros(6, device=DEVICE), torch.ones(6, device=DEVICE)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    x_ref, w_ref, b_ref = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    dout = make(shape, torch.float32, "nhwc", seed=9)
    resnet_fast.set_backend("triton")
    try:
        out = resnet_fast.ops.bn_relu(x, weight, bias, rm, rv, training=True)
        out.backward(dout)
    finally:
        resnet_fast.set_backend("auto")
    want = F.relu(F.batch_norm(x_ref, rm_ref, rv_ref, w_ref, b_ref, training=True))
    want.backward(dout)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, want, **tol)
    for got, ref in ((x.grad, x_ref.grad), (weight.grad, w_ref.grad), (bias.grad, b_ref.grad), (rm, rm_ref),
                     (rv, rv_ref)):
        torch.testing.assert_close(got, ref, **tol)


# ----------------------------------------------------------------------------- registration
def test_triton_primitives_have_no_op_names_of_their_own():
    """One name per primitive: the Triton launchers are called by the backend table, not registered
    as second ops; every primitive has one."""
    for name in reference.PRIMITIVES:
        assert callable(getattr(kernels, name)), name
        assert not hasattr(torch.ops.resnet_fast, f"triton_{name}"), name
    y = make(SHAPES[2], torch.bfloat16, "nhwc")
    for got, want in zip(kernels.bn_stats(y), reference.bn_stats(y)):
        assert_same(got, want, SUM_TOL)


# ----------------------------------------------------------------------------- determinism and devices
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reductions_bitwise_reproducible(layout):
    """Fixed tiles and splits (no autotuning): two calls give the same bits."""
    shape = SHAPES[2]
    fwd = inputs(shape, torch.float32, layout, "affine")
    first = kernels.bn_stats(fwd[0])
    second = kernels.bn_stats(fwd[0])
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    dout = make(shape, torch.float32, layout, seed=5)
    center = first[0]
    args = (dout, *fwd, True, center, center)
    for a, b in zip(kernels.scale_shift_act_backward_reduce(*args), kernels.scale_shift_act_backward_reduce(*args)):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensors_on_another_device_than_the_current_one(layout):
    """Launches run on the tensors' device (cuda:1) while cuda:0 is current, and leave cuda:0 current."""
    shape = (4, 64, 14, 14)
    with torch.cuda.device(0):
        y, scale, shift, res, res_scale, res_shift = (
            t.to("cuda:1") if t is not None else None for t in inputs(shape, torch.float32, layout, "affine"))
        fwd = (y, scale, shift, res, res_scale, res_shift)
        for got, want in zip(kernels.bn_stats(y), reference.bn_stats(y)):
            assert got.device == y.device
            assert_same(got, want, SUM_TOL)
        assert_same(kernels.scale_shift_act(*fwd, True), reference.scale_shift_act(*fwd, True), OUT_TOL[torch.float32])
        dout = make(shape, torch.float32, layout, seed=5).to("cuda:1")
        center = y.mean(dim=(0, 2, 3))
        args = (dout, *fwd, True, center, None)
        for got, want in zip(kernels.scale_shift_act_backward_reduce(*args),
                             reference.scale_shift_act_backward_reduce(*args)):
            assert_same(got, want, SUM_TOL)
        assert torch.cuda.current_device() == 0
