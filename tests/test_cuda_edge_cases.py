"""Edge cases of the GPU kernels (csrc/cuda and resnet_fast/kernels/triton) that the primitive tests miss.

Each test takes a backend: "cuda" and "triton" run CUDA tensors (skipped without a GPU); the
invariants that hold for any backend also run with "cpu" and "reference" on CPU tensors here:
- empty tensors (N = 0, C = 0, H = 0) for every primitive and for bn_relu / bn_add_relu;
- NaN and Inf propagated as eager PyTorch does (the non-finite values land where eager's do);
- misaligned inputs for every primitive in both layouts, coefficient tensors included
  (views at an odd storage offset: the kernels fall back to narrower loads, same results);
- an NHWC last channel tile that is partial with several tiles (C = 33, 264);
GPU only:
- a non-default stream (the kernels launch on the current stream, not the default one);
- CUDA graph capture of a training step (no host synchronization, replay equals eager);
- (slow) batches past 2^31 elements in NHWC with data that varies per element, every output
  compared in full: the chunk offsets of every forward and backward primitive.

Tolerances: elementwise primitives round like the reference op by op, so they are compared
exactly; reductions sum in another order, so they are compared with a float64 evaluation of
the same sums with an error of at most 64 * eps(acc) * sum|terms| (tests/test_cuda_primitives.py
explains the bound).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from conftest import cpu_backends
from op_testing import selected_backend
from resnet_fast import backend, ops
from resnet_fast.ops import primitives as P
from resnet_fast.ops import reference

GPU_BACKENDS = ["cuda", "triton"]
ALL_BACKENDS = ["cpu", "reference"] + GPU_BACKENDS
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def _device_of(name: str) -> torch.device:
    return torch.device("cuda" if name in GPU_BACKENDS else "cpu")


def _usable(name: str) -> None:
    """Skip unless backend ``name`` runs here (GPU backends need a GPU, cpu the compiled extension)."""
    if name in GPU_BACKENDS and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if name in ("cpu", "reference") and name not in cpu_backends():
        pytest.skip(f"backend {name!r} is not usable here")
    usable, why = backend.backend_status()[name]
    if not usable:
        pytest.skip(f"backend {name!r}: {why}")


@contextlib.contextmanager
def _backend(name: str):
    """(primitive table, device) of backend ``name``, selected for the fused ops in the block."""
    _usable(name)
    device = _device_of(name)
    with selected_backend(name):
        yield backend.primitives(device), device


def _acc(dtype):
    return P.acc_dtype(dtype)


def _randn(shape, dtype, device, seed, fmt=torch.contiguous_format, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64) + offset
    return t.to(device=device, dtype=dtype).contiguous(memory_format=fmt)


def _positive(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(device=device, dtype=_acc(dtype))


def _signed(shape, dtype, device, seed):
    return _randn(shape, _acc(dtype), device, seed)


def _misaligned(t: torch.Tensor, fmt=torch.contiguous_format, offset: int = 1) -> torch.Tensor:
    """A copy of ``t`` in layout ``fmt`` whose data starts ``offset`` elements into its storage
    (1 element: 2 or 4 bytes off a 16-byte boundary)."""
    flat = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    if fmt == torch.channels_last and t.dim() == 4:
        n, c, h, w = t.shape
        view = flat[offset:].view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        view = flat[offset:].view(t.shape)
    view.copy_(t)
    assert view.storage_offset() == offset and view.is_contiguous(memory_format=fmt)
    return view


def _assert_sums_close(got, ref64, abs64, dtype, what):
    """|got - ref64| <= 64 * eps(acc) * abs64 (+ the smallest normal, for all-zero sums)."""
    acc = _acc(dtype)
    assert got.dtype == acc and got.shape == ref64.shape, what
    tol = 64 * torch.finfo(acc).eps * abs64 + torch.finfo(acc).tiny
    err = (got.double() - ref64).abs()
    assert not (err > tol).any(), f"{what}: max error {err.max().item():.3g}"


def _check_stats(stats, y, what=""):
    """bn_stats outputs against float64 sums of y."""
    mean, var, sample_mean = stats
    y64 = y.double()
    ref_var, ref_mean = torch.var_mean(y64, dim=(0, 2, 3), correction=0)
    _assert_sums_close(mean, ref_mean, y64.abs().mean(dim=(0, 2, 3)), y.dtype, what + "mean")
    _assert_sums_close(sample_mean, y64.mean(dim=(2, 3)), y64.abs().mean(dim=(2, 3)), y.dtype, what + "sample_mean")
    _assert_sums_close(var, ref_var, ref_var + ref_mean.abs() * ref_var.sqrt(), y.dtype, what + "var")


def _check_backward_sums(sums, args, what=""):
    """scale_shift_act_backward_reduce outputs against float64 sums."""
    grad_out, y, scale, shift, residual, res_scale, res_shift, relu, center, res_center = args
    sum_g, sum_g_y, sum_g_res = sums
    g = P._masked_grad(grad_out, y, scale, shift, residual, res_scale, res_shift, relu).double()
    ty = g * (y.double() - center.double()[None, :, None, None])
    _assert_sums_close(sum_g, g.sum(dim=(2, 3)), g.abs().sum(dim=(2, 3)), y.dtype, what + "sum_g")
    _assert_sums_close(sum_g_y, ty.sum(dim=(2, 3)), ty.abs().sum(dim=(2, 3)), y.dtype, what + "sum_g_y")
    if res_center is not None:
        tr = g * (residual.double() - res_center.double()[None, :, None, None])
        _assert_sums_close(sum_g_res, tr.sum(dim=(0, 2, 3)), tr.abs().sum(dim=(0, 2, 3)), y.dtype, what + "sum_g_res")


def _primitive_args(shape, dtype, device, fmt, seed=0):
    """Arguments of every primitive on one activation shape (residual in affine mode, relu)."""
    n, c = shape[0], shape[1]
    y = _randn(shape, dtype, device, seed, fmt, offset=0.3)
    residual = _randn(shape, dtype, device, seed + 1, fmt)
    grad_out = _randn(shape, dtype, device, seed + 2, fmt)
    scale, shift = _positive((n, c), dtype, device, seed + 3), _signed((n, c), dtype, device, seed + 4)
    res_scale, res_shift = _positive((c,), dtype, device, seed + 5), _signed((c,), dtype, device, seed + 6)
    center, res_center = _signed((c,), dtype, device, seed + 7), _signed((c,), dtype, device, seed + 8)
    k_g, k_0 = _signed((n, c), dtype, device, seed + 9), _signed((n, c), dtype, device, seed + 10)
    k_y, res_k_g, res_k_0, res_k_r = (_signed((c,), dtype, device, seed + 11 + i) for i in range(4))
    pre = (y, scale, shift, residual, res_scale, res_shift)
    return {
        "bn_stats": (y,),
        "scale_shift_act": (*pre, True),
        "scale_shift_act_backward_reduce": (grad_out, *pre, True, center, res_center),
        "scale_shift_act_backward_apply": (grad_out, *pre, True, k_g, k_0, k_y, center, res_k_g, res_k_0, res_k_r,
                                           res_center),
        "bn_finalize": (center, res_scale, res_scale.half(), res_shift, 1e-5, max(n * shape[2] * shape[3], 1), n),
        "bn_backward_finalize": (k_g, k_0, res_scale, res_shift, max(n * shape[2] * shape[3], 1), n, True),
    }


# Which positional arguments are activations (laid out like y) and which are coefficients.
ACTIVATION_ARGS = {"bn_stats": (0,), "scale_shift_act": (0, 3), "scale_shift_act_backward_reduce": (0, 1, 4),
                   "scale_shift_act_backward_apply": (0, 1, 4)}
COEF_ARGS = {"bn_stats": (), "scale_shift_act": (1, 2, 4, 5), "scale_shift_act_backward_reduce": (2, 3, 5, 6, 8, 9),
             "scale_shift_act_backward_apply": (2, 3, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15),
             "bn_finalize": (0, 1, 2, 3), "bn_backward_finalize": (0, 1, 2, 3)}


def _check_primitive(name, got, args):
    """``got`` from primitive ``name`` against the reference primitive on ``args``."""
    if name == "bn_stats":
        _check_stats(got, args[0])
    elif name == "scale_shift_act_backward_reduce":
        _check_backward_sums(got, args)
    else:  # elementwise: the same rounding, op by op; finalize: within float rounding of the reference
        exact = name.startswith("scale_shift_act")
        want = P.PRIMITIVES[name](*args)
        for a, b in zip((got,) if isinstance(got, torch.Tensor) else got, (want,) if isinstance(want, torch.Tensor)
                        else want):
            torch.testing.assert_close(a, b, rtol=0 if exact else None, atol=0 if exact else None, equal_nan=True)
            if a.dim() == 4:
                assert a.is_contiguous(memory_format=P.memory_format_of(args[0])), f"{name}: output layout"


# ----------------------------------------------------------------------------- empty tensors
EMPTY_SHAPES = [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 5), (2, 4, 5, 0)]


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("name", list(P.PRIMITIVES))
def test_empty_primitives(backend_name, fmt, shape, name):
    """Every primitive on an empty batch, no channels or an empty plane: the reference's shapes,
    dtypes and values (NaN statistics of nothing, zero sums)."""
    with _backend(backend_name) as (prims, device):
        args = _primitive_args(shape, torch.float32, device, FORMATS[fmt])[name]
        got = getattr(prims, name)(*args)
        want = P.PRIMITIVES[name](*args)
        for a, b in zip(got, want) if isinstance(got, tuple) else [(got, want)]:
            assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, name
            torch.testing.assert_close(a, b, equal_nan=True)  # finalize: the reference may round differently


def _fused_cases(shape, dtype, device, fmt, seed=0):
    """(fused op, eager composition, kwargs) for bn_relu and bn_add_relu on ``shape``."""
    c = shape[1]

    def bn(seed):
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device, torch.float32),
                torch.randn(c, generator=g, dtype=torch.float64).to(device, torch.float32),
                torch.randn(c, generator=g, dtype=torch.float64).to(device, torch.float32),
                (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device, torch.float32)]

    x = _randn(shape, dtype, device, seed, fmt)
    identity = _randn(shape, dtype, device, seed + 1, fmt)
    return [
        (ops.bn_relu, reference.bn_relu, (x, *bn(seed + 2)), {}),
        (ops.bn_add_relu, reference.bn_add_relu, (x, *bn(seed + 3), identity), {}),
    ]


def _run_fused(fn, args, kwargs, training, grad=True):
    """(output, input gradients, running statistics) of ``fn`` on copies of ``args``."""
    args = [a.detach().clone() for a in args]
    leaves = [a.requires_grad_() for a in args if a.dim() == 4] if grad else []
    out = fn(*args, training=training, **kwargs)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True) if leaves else ()
    return out.detach(), grads, (args[3], args[4])


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("shape,training", [
    ((2, 0, 3, 3), True), ((2, 0, 3, 3), False), ((2, 4, 0, 5), False), ((2, 4, 0, 5), True),
    ((0, 4, 3, 3), True), ((0, 4, 3, 3), False),
])
def test_empty_fused_ops(backend_name, shape, training):
    """bn_relu / bn_add_relu on empty inputs behave like eager: the same empty outputs and
    gradients and running statistics; where eager raises (C = 0: an IndexError inside
    F.batch_norm), the fused op raises or returns the empty output."""
    with _backend(backend_name) as (_, device):
        for fused, eager, args, kwargs in _fused_cases(shape, torch.float32, device, torch.contiguous_format):
            try:
                want = _run_fused(eager, args, kwargs, training)
            except Exception:  # noqa: BLE001 (whatever eager raises)
                try:
                    got = _run_fused(fused, args, kwargs, training)
                except (ValueError, RuntimeError):
                    continue
                assert got[0].shape == args[0].shape and got[0].numel() == 0
                continue
            got = _run_fused(fused, args, kwargs, training)
            assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
            for a, b in zip(got[1], want[1]):
                assert (a is None) == (b is None) and (a is None or a.shape == b.shape)
            for a, b in zip(got[2], want[2]):
                torch.testing.assert_close(a, b, equal_nan=True)


# ----------------------------------------------------------------------------- NaN / Inf
def _assert_nonfinite_like(got, want, what):
    """NaN exactly where eager has NaN, +-Inf where eager has +-Inf; finite values close."""
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN positions differ from eager"
    assert torch.equal(torch.isposinf(got), torch.isposinf(want)), f"{what}: +Inf positions differ from eager"
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), f"{what}: -Inf positions differ from eager"
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def _poison(x, values):
    """x with values[c] at one element of channel c (c = 1, 2, ...)."""
    x = x.clone()
    for c, v in enumerate(values, start=1):
        x[0, c, 1, 2] = v
    return x


def _poisoned_runs(backend_name, fmt, training):
    """(fused run, eager run) per fused op with NaN, +Inf, -Inf in channels 1, 2, 3 of the input."""
    with _backend(backend_name) as (_, device):
        runs = []
        for fused, eager, args, kwargs in _fused_cases((2, 6, 5, 7), torch.float32, device, FORMATS[fmt]):
            args = list(args)
            args[0] = _poison(args[0], [float("nan"), float("inf"), -float("inf")]).contiguous(
                memory_format=FORMATS[fmt])
            runs.append((_run_fused(fused, args, kwargs, training), _run_fused(eager, args, kwargs, training)))
        return runs


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("training", [True, False])
def test_nan_inf_propagate_like_eager(backend_name, fmt, training):
    """NaN, +Inf and -Inf in the input: training makes the poisoned channels' statistics non-finite
    (the output non-finite across those channels, as eager's); eval keeps them elementwise
    (NaN stays NaN, Inf stays Inf, relu(-Inf) = 0). Running statistics non-finite where eager's
    are (eager's mean of an Inf is Inf where the kernels may give NaN: both non-finite)."""
    for got, want in _poisoned_runs(backend_name, fmt, training):
        if training:
            for c in (1, 2, 3):
                assert torch.equal(torch.isfinite(got[0][:, c]), torch.isfinite(want[0][:, c])), c
            clean = [0, 4, 5]
            torch.testing.assert_close(got[0][:, clean], want[0][:, clean], rtol=1e-4, atol=1e-4)
        else:
            _assert_nonfinite_like(got[0], want[0], "output")
        for a, b in zip(got[2], want[2]):
            assert torch.equal(torch.isfinite(a), torch.isfinite(b)), "running statistics"


# Found by this test (the primitives' specification, resnet_fast/ops/primitives.py): in eval the input
# gradient is still k_g*g + k_0 + k_y*(y - center) with k_y = 0, and a non-finite y makes 0 * Inf = NaN
# where eager's is finite. (The ReLU mask, which dropped the gradient where z is NaN, follows eager's
# threshold_backward now.) Strict: remove the mark with the fix.
_EVAL_NONFINITE_Y = pytest.mark.xfail(strict=True, reason="primitives spec: eval k_y*(y - center) = 0*Inf = NaN")


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("training", [True, pytest.param(False, marks=_EVAL_NONFINITE_Y)])
def test_nan_inf_gradients_like_eager(backend_name, fmt, training):
    """The input gradients of the poisoned runs: non-finite exactly where eager's are, the
    finite values close."""
    for got, want in _poisoned_runs(backend_name, fmt, training):
        for a, b in zip(got[1], want[1]):
            assert torch.equal(torch.isfinite(a), torch.isfinite(b)), "input gradient: non-finite positions"
            finite = torch.isfinite(b)
            torch.testing.assert_close(a[finite], b[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_nan_inf_in_primitives(backend_name, fmt):
    """Each primitive keeps NaN/Inf where the reference does: elementwise outputs bit for bit,
    statistics non-finite exactly in the poisoned channels."""
    with _backend(backend_name) as (prims, device):
        shape = (2, 6, 5, 7)
        args = _primitive_args(shape, torch.float32, device, FORMATS[fmt])
        bad = float("nan"), float("inf"), -float("inf")
        for name in ("scale_shift_act", "scale_shift_act_backward_apply"):
            a = list(args[name])
            a[0] = _poison(a[0], bad).contiguous(memory_format=FORMATS[fmt])
            _check_primitive(name, getattr(prims, name)(*a), tuple(a))
        y = _poison(args["bn_stats"][0], bad).contiguous(memory_format=FORMATS[fmt])
        mean, var, sample_mean = prims.bn_stats(y)
        for c in range(6):
            poisoned = c in (1, 2, 3)
            assert bool(torch.isfinite(var[c])) != poisoned, f"var[{c}]"
            assert bool(torch.isfinite(sample_mean[0, c])) != poisoned and bool(torch.isfinite(sample_mean[1, c]))
        clean = torch.tensor([0, 4, 5], device=device)
        _check_stats((mean[clean], var[clean], sample_mean[:, clean]), y[:, clean])
        a = list(args["scale_shift_act_backward_reduce"])
        a[0] = _poison(a[0], bad).contiguous(memory_format=FORMATS[fmt])  # grad_out
        sum_g, sum_g_y, _ = prims.scale_shift_act_backward_reduce(*a)
        want = P.scale_shift_act_backward_reduce(*a)
        assert torch.equal(torch.isfinite(sum_g), torch.isfinite(want[0]))
        assert torch.equal(torch.isfinite(sum_g_y), torch.isfinite(want[1]))


# ----------------------------------------------------------------------------- misaligned inputs
@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["activations", "coefficients", "both"])
@pytest.mark.parametrize("name", list(P.PRIMITIVES))
def test_misaligned_inputs(backend_name, fmt, dtype, which, name):
    """Views one element into their storage (activations, coefficient tensors, or both) give the
    reference's results: 16-byte accesses are only taken where every pointer they touch allows
    them (NCHW coefficients are read one by one, so they need no alignment). Shapes: 14x14 planes
    (8-byte loads for 2-byte types when aligned) and 8x8 planes, C a multiple of 8."""
    if name in ("bn_finalize", "bn_backward_finalize") and which == "activations":
        pytest.skip("the finalize primitives take no activations")
    with _backend(backend_name) as (prims, device):
        for shape in [(2, 16, 14, 14), (3, 24, 8, 8)]:
            args = list(_primitive_args(shape, dtype, device, FORMATS[fmt])[name])
            moved = (ACTIVATION_ARGS.get(name, ()) if which != "coefficients" else ()) + (
                COEF_ARGS[name] if which != "activations" else ())
            for i in moved:
                if isinstance(args[i], torch.Tensor):
                    args[i] = _misaligned(args[i], FORMATS[fmt] if args[i].dim() == 4 else torch.contiguous_format)
            _check_primitive(name, getattr(prims, name)(*args), tuple(args))


# ----------------------------------------------------------------------------- partial channel tiles
@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 33, 9, 9), (3, 264, 7, 7), (1, 264, 14, 14), (5, 33, 1, 1)])
def test_nhwc_partial_last_channel_tile(backend_name, dtype, shape):
    """channels_last with C = 33 (scalar path: 33 channel columns, two tiles of 32) and C = 264
    (33 vectors of 8 half values: the second tile holds one): every channel's statistics and
    gradient sums, and the elementwise passes, against the reference."""
    with _backend(backend_name) as (prims, device):
        args = _primitive_args(shape, dtype, device, torch.channels_last)
        for name in P.PRIMITIVES:
            _check_primitive(name, getattr(prims, name)(*args[name]), args[name])


# ----------------------------------------------------------------------------- streams and graphs
@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", GPU_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_non_default_stream(backend_name, fmt):
    """Every primitive launched under torch.cuda.stream(side) runs on that stream: with the
    default stream held up by a sleeping kernel, the side stream finishes the primitives and
    compares their results on its own; a kernel launched on the default stream instead would
    not have run yet (its output unwritten) and the comparison would fail."""
    with _backend(backend_name) as (prims, device):
        args = _primitive_args((4, 64, 28, 28), torch.float16, device, FORMATS[fmt])
        want = {name: getattr(prims, name)(*args[name]) for name in P.PRIMITIVES}  # also compiles (Triton)
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        torch.cuda._sleep(2_000_000_000)  # about a second of one SM on the default stream
        with torch.cuda.stream(side):
            got = {name: getattr(prims, name)(*args[name]) for name in P.PRIMITIVES}
            side.synchronize()
            assert not torch.cuda.default_stream().query(), (
                "the default stream finished first: a primitive synchronized the device, or the sleep was too short")
            same = {name: all(torch.equal(a, b) for a, b in zip(
                got[name] if isinstance(got[name], tuple) else [got[name]],
                want[name] if isinstance(want[name], tuple) else [want[name]])) for name in P.PRIMITIVES}
        torch.cuda.synchronize()
        assert all(same.values()), [name for name, ok in same.items() if not ok]


@contextlib.contextmanager
def _deterministic_cudnn():
    """cuDNN's deterministic convolution algorithms (bitwise comparisons of two runs), restored after."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


class _TinyNet(torch.nn.Module):
    """conv -> bn_relu -> conv -> bn_add_relu (with the first activation) -> mean: both fused ops,
    forward and backward, with running statistics."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        a = ops.bn_relu(self.conv1(x), self.bn1.weight, self.bn1.bias, self.bn1.running_mean, self.bn1.running_var,
                        training=True, num_batches_tracked=self.bn1.num_batches_tracked)
        b = ops.bn_add_relu(self.conv2(a), self.bn2.weight, self.bn2.bias, self.bn2.running_mean,
                            self.bn2.running_var, a, training=True, num_batches_tracked=self.bn2.num_batches_tracked)
        return b.mean(dim=(1, 2, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("backend_name", GPU_BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cuda_graph_training_step(backend_name, fmt):
    """A training step (forward, backward, SGD) captured in a CUDA graph: capture succeeds (no
    host synchronization, no allocation outside the graph pool), and replays on new data give
    the eager steps' loss, parameters and running statistics bit for bit."""
    with _backend(backend_name) as (_, device), _deterministic_cudnn():
        torch.manual_seed(0)
        eager_net = _TinyNet().to(device).to(memory_format=FORMATS[fmt])
        graph_net = _TinyNet().to(device).to(memory_format=FORMATS[fmt])
        graph_net.load_state_dict(eager_net.state_dict())
        opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in (eager_net, graph_net)]
        data = [_randn((4, 3, 16, 16), torch.float32, device, 100 + i, FORMATS[fmt]) for i in range(5)]

        def step(net, opt, x):
            opt.zero_grad(set_to_none=False)
            loss = net(x).square().sum()
            loss.backward()
            opt.step()
            return loss

        static_x = data[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (the steps 0 and 1 of both nets), as the graph docs ask
            for x in data[:2]:
                static_x.copy_(x)
                step(graph_net, opts[1], static_x)
        torch.cuda.current_stream().wait_stream(side)
        for x in data[:2]:
            step(eager_net, opts[0], x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step(graph_net, opts[1], static_x)
        for x in data[2:]:
            static_x.copy_(x)
            graph.replay()
            want = step(eager_net, opts[0], x)
            torch.testing.assert_close(static_loss, want, rtol=0, atol=0)
        torch.cuda.synchronize()
        for (k, a), b in zip(graph_net.state_dict().items(), eager_net.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{k}: {m}")


# ----------------------------------------------------------------------------- past 2^31 elements
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("backend_name", GPU_BACKENDS)
def test_nhwc_past_2_31_elements(backend_name):
    """A channels_last float16 batch of 33 x 64 x 1024 x 1024 (2.2e9 elements: the CUDA kernels run
    two chunks) with random data: every primitive's outputs compared in full, sample by sample,
    with the reference on that sample (elementwise outputs bit for bit; per-sample sums and
    statistics with the float64 bound), so a wrong chunk offset in any forward or backward
    primitive shows."""
    _usable(backend_name)
    if torch.cuda.get_device_properties(0).total_memory < 60 * 2**30:
        pytest.skip("needs a GPU with 60 GiB of memory (about 30 GiB used)")
    with _backend(backend_name) as (prims, device):
        shape, dtype, fmt = (33, 64, 1024, 1024), torch.float16, torch.channels_last
        n, c = shape[0], shape[1]
        g = torch.Generator(device=device).manual_seed(0)

        def big(offset=0.0):
            t = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
            for i in range(n):  # sample by sample: no float32 copy of the whole batch
                t[i].copy_(torch.randn(shape[1:], generator=g, device=device) + offset)
            return t

        y, residual, grad_out = big(0.5), big(), big()
        scale, shift = _positive((n, c), dtype, device, 1), _signed((n, c), dtype, device, 2)
        res_scale, res_shift = _positive((c,), dtype, device, 3), _signed((c,), dtype, device, 4)
        center, res_center = _signed((c,), dtype, device, 5), _signed((c,), dtype, device, 6)
        k_g, k_0 = _signed((n, c), dtype, device, 7), _signed((n, c), dtype, device, 8)
        k_y, rk_g, rk_0, rk_r = (_signed((c,), dtype, device, 9 + i) for i in range(4))

        def rows(t, i):  # sample i's row of an (N, C) coefficient
            return t[i:i + 1]

        mean, var, sample_mean = prims.bn_stats(y)
        total, total_sq = torch.zeros(c, dtype=torch.float64, device=device), 0
        sample_means = []
        for i in range(n):
            yi = y[i:i + 1].double()
            m = yi.mean(dim=(0, 2, 3))
            _assert_sums_close(sample_mean[i], m, yi.abs().mean(dim=(0, 2, 3)), dtype, f"sample_mean[{i}]")
            sample_means.append(m)
            total += m
        ref_mean = total / n
        for i in range(n):  # equal counts per sample: var = mean over samples of E[(y - mean)^2]
            total_sq = total_sq + ((y[i:i + 1].double() - ref_mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.double(), total_sq / n, rtol=1e-5, atol=1e-6)

        out = prims.scale_shift_act(y, scale, shift, residual, res_scale, res_shift, True)
        for i in range(n):
            want = P.scale_shift_act(y[i:i + 1], rows(scale, i), rows(shift, i), residual[i:i + 1], res_scale,
                                     res_shift, True)
            assert torch.equal(out[i:i + 1], want), f"scale_shift_act, sample {i}"
        del out

        args = (grad_out, y, scale, shift, residual, res_scale, res_shift, True, center, res_center)
        sum_g, sum_g_y, sum_g_res = prims.scale_shift_act_backward_reduce(*args)
        res_total = torch.zeros(c, dtype=torch.float64, device=device)
        res_abs = torch.zeros(c, dtype=torch.float64, device=device)
        for i in range(n):
            a = (grad_out[i:i + 1], y[i:i + 1], rows(scale, i), rows(shift, i), residual[i:i + 1], res_scale,
                 res_shift, True, center, res_center)
            _check_backward_sums((sum_g[i:i + 1], sum_g_y[i:i + 1], torch.empty(0, device=device)),
                                 a[:-1] + (None,), f"sample {i}: ")
            gi = P._masked_grad(*a[:7], True).double()
            tr = gi * (residual[i:i + 1].double() - res_center.double()[None, :, None, None])
            res_total += tr.sum(dim=(0, 2, 3))
            res_abs += tr.abs().sum(dim=(0, 2, 3))
        _assert_sums_close(sum_g_res, res_total, res_abs, dtype, "sum_g_res")

        grad_y, grad_res = prims.scale_shift_act_backward_apply(grad_out, y, scale, shift, residual, res_scale,
                                                                res_shift, True, k_g, k_0, k_y, center, rk_g, rk_0,
                                                                rk_r, res_center)
        for i in range(n):
            want_y, want_res = P.scale_shift_act_backward_apply(
                grad_out[i:i + 1], y[i:i + 1], rows(scale, i), rows(shift, i), residual[i:i + 1], res_scale,
                res_shift, True, rows(k_g, i), rows(k_0, i), k_y, center, rk_g, rk_0, rk_r, res_center)
            assert torch.equal(grad_y[i:i + 1], want_y), f"grad_y, sample {i}"
            assert torch.equal(grad_res[i:i + 1], want_res), f"grad_residual, sample {i}"
