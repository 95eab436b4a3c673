"""The C++ CPU path of the BN + activation (csrc/cpu/bn_act.cpp) against the primitive path.

``torch.ops.resnet_fast.bn_act_forward / bn_act_backward`` do in one call per direction what
``resnet_fast.ops._bn.bn_act_forward / bn_act_backward`` do on the four primitives. Both run
the same C++ kernels, so the comparison isolates the per-channel algebra moved into C++:
the same operations in the acc dtype, except that the backward's sums over n go through
double (the primitive path adds float32 (N, C) sums in float32). Tolerances, relative to
the largest magnitude of the expected tensor: 16 eps of the acc dtype (that reordering of
N <= 4 terms, propagated through a few products), plus one unit in the last place of
float16 / bfloat16 outputs (a last-bit acc difference can flip the rounding on store).
The public ops' numerics against eager PyTorch are tested in the per-op files, where the
"cpu" backend takes this path.
"""
from __future__ import annotations

import pytest
import torch

import resnet_fast
from resnet_fast import _extension, ops
from resnet_fast.ops import _bn
from op_testing import selected_backend

pytestmark = pytest.mark.skipif(
    not (_extension.load() and torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast::bn_act_forward", "CPU")),
    reason=f"the C++ CPU kernels are not built/loaded ({_extension.status.get('error')})")

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPES = {"odd": (2, 5, 3, 4), "stage7": (4, 33, 7, 7), "1x1": (4, 9, 1, 1)}
RESIDUALS = ("none", "identity", "identity_bn")
NEEDS_ALL = dict.fromkeys(_bn.GRADIENTS, True)


@pytest.fixture(autouse=True)
def cpu_backend():
    with selected_backend("cpu"):
        yield


def bn_params(channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return _bn.BNParams(torch.rand(channels, generator=g).to(dtype) + 0.5,
                        torch.randn(channels, generator=g).to(dtype),
                        torch.randn(channels, generator=g).to(dtype) * 0.1,
                        torch.rand(channels, generator=g).to(dtype) + 0.5)


def make_inputs(shape, fmt, dtype, residual_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def act():
        return (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)

    y = act()
    residual = act() if residual_kind != "none" else None
    res_params = bn_params(shape[1], param_dtype, seed + 1) if residual_kind == "identity_bn" else None
    return y, bn_params(shape[1], param_dtype, seed), residual, res_params, act()


def tolerance(expected: torch.Tensor, dtype: torch.dtype) -> float:
    acc = _bn.acc_dtype(dtype)
    tol = 16 * torch.finfo(acc).eps
    if dtype in (torch.float16, torch.bfloat16) and expected.dtype == dtype:
        tol += torch.finfo(dtype).eps
    return tol * max(expected.abs().max().item(), 1.0)


def assert_close(actual, expected, dtype, what):
    if expected is None:
        assert actual is None, what
        return
    assert actual is not None, what
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if actual.dim() == 4:
        assert actual.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(
            memory_format=torch.channels_last), what
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= tolerance(expected, dtype), f"{what}: max error {err:.3g}"


def both_paths(monkeypatch, fn):
    """fn() through the C++ path, then through the primitive path."""
    fused = fn()
    with monkeypatch.context() as m:
        m.setattr(_bn, "cpu_fused", lambda *args: False)
        primitive = fn()
    return fused, primitive


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("use_batch_stats", [True, False], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("residual_kind", RESIDUALS)
def test_matches_primitive_path(monkeypatch, residual_kind, relu, use_batch_stats, shape, fmt, dtype):
    y, params, residual, res_params, grad_out = make_inputs(shape, fmt, dtype, residual_kind)

    def run():
        fwd = _bn.bn_act_forward(y, params, use_batch_stats, 1e-5, relu, residual, res_params)
        res_norm = fwd.res_norm
        saved = _bn.saved_normalized(fwd.norm.mean, fwd.norm.invstd, params, y)
        saved_res = None if res_norm is None else _bn.saved_normalized(res_norm.mean, res_norm.invstd,
                                                                      res_params, residual)
        bwd = _bn.bn_act_backward(grad_out, y, params, saved, use_batch_stats, relu, residual, res_params,
                                  saved_res, None, None, "", NEEDS_ALL)
        stats = [fwd.norm.mean, fwd.norm.invstd, fwd.var]
        if res_norm is not None:
            stats += [res_norm.mean, res_norm.invstd, fwd.res_var]
        return [fwd.out] + stats + [bwd.grad_y, bwd.grad_weight, bwd.grad_bias, bwd.grad_residual,
                                    bwd.grad_res_weight, bwd.grad_res_bias]

    fused, primitive = both_paths(monkeypatch, run)
    assert len(fused) == len(primitive)
    for i, (a, e) in enumerate(zip(fused, primitive)):
        assert_close(a, e, dtype, f"output {i}")


@pytest.mark.parametrize("wanted", [("y",), ("weight", "bias"), ("residual",), ("res_weight",),
                                    ("y", "res_bias"), ()])
@pytest.mark.parametrize("residual_kind", RESIDUALS)
def test_only_wanted_gradients(monkeypatch, residual_kind, wanted):
    y, params, residual, res_params, grad_out = make_inputs((3, 6, 4, 5), torch.channels_last, torch.float64,
                                                            residual_kind)
    needs = {name: name in wanted for name in _bn.GRADIENTS}
    fwd = _bn.bn_act_forward(y, params, True, 1e-5, True, residual, res_params)
    res_norm = fwd.res_norm

    def run():
        result = _bn.bn_act_backward(grad_out, y, params, fwd.norm, True, True, residual, res_params, res_norm,
                                     None, None, "", needs)
        return [result.grad_y, result.grad_weight, result.grad_bias, result.grad_residual,
                result.grad_res_weight, result.grad_res_bias]

    fused, primitive = both_paths(monkeypatch, run)
    for name, a, e in zip(_bn.GRADIENTS, fused, primitive):
        assert_close(a, e, torch.float64, name)
        if not needs[name]:
            assert a is None, name


def test_taken_by_the_cpu_backend_only(monkeypatch):
    """The public ops take the C++ path on the cpu backend, not on reference, with SE or SyncBN."""
    calls = []
    forward = _bn._cpu_forward
    backward = _bn._cpu_backward
    monkeypatch.setattr(_bn, "_cpu_forward", lambda *a: calls.append("fwd") or forward(*a))
    monkeypatch.setattr(_bn, "_cpu_backward", lambda *a: calls.append("bwd") or backward(*a))
    y, params, identity, _, _ = make_inputs((2, 8, 3, 3), torch.channels_last, torch.float32, "identity")
    y.requires_grad_()
    bn = (params.weight, params.bias, params.running_mean.clone(), params.running_var.clone())

    def run_all():
        ops.bn_relu(y, *bn, training=True).sum().backward()
        ops.bn_add_relu(y, *bn, identity, training=True).sum().backward()

    run_all()
    assert calls == ["fwd", "bwd", "fwd", "bwd"]
    calls.clear()
    resnet_fast.set_backend("reference")
    run_all()
    assert calls == []
    resnet_fast.set_backend("cpu")
    assert not _bn.cpu_fused(y, _bn.SEParams(None, None, None, None), "")
    assert not _bn.cpu_fused(y, None, "some_group")
    assert not _bn.cpu_fused(y[:0], None, "")


def _forward_args(residual_kind="identity_bn", fmt=torch.channels_last, use_batch_stats=True):
    y, params, residual, res_params, grad_out = make_inputs((2, 5, 3, 4), fmt, torch.float32, residual_kind)
    res = res_params or _bn.NO_BN
    return [y, params.weight, params.bias, params.running_mean, params.running_var, residual, res.weight, res.bias,
            res.running_mean, res.running_var, res_params is not None, use_batch_stats, 1e-5, True], grad_out


@pytest.mark.parametrize("residual_kind", RESIDUALS)
@pytest.mark.parametrize("use_batch_stats", [True, False], ids=["batch_stats", "running_stats"])
def test_opcheck(residual_kind, use_batch_stats):
    args, grad_out = _forward_args(residual_kind, use_batch_stats=use_batch_stats)
    torch.library.opcheck(torch.ops.resnet_fast.bn_act_forward.default, tuple(args))
    out, mean, invstd, _, res_mean, res_invstd, _ = torch.ops.resnet_fast.bn_act_forward(*args)
    residual_bn = residual_kind == "identity_bn"
    for needs in ([True] * 6, [False, True, False, True, False, True]):
        backward_args = (grad_out, args[0], args[1], args[2], mean, invstd, args[5], args[6], args[7],
                         res_mean if residual_bn else None, res_invstd if residual_bn else None,
                         use_batch_stats, True, needs)
        torch.library.opcheck(torch.ops.resnet_fast.bn_act_backward.default, backward_args)


@pytest.mark.parametrize("index, value, message", [
    (1, torch.ones(4), "expected weight of shape \\(5,\\)"),
    (4, torch.ones(5, 1), "expected running_var of shape"),
    (7, torch.ones(6), "expected res_bias of shape"),
    (1, torch.ones(5, dtype=torch.long), "weight must be floating point"),
    (5, torch.ones(2, 5, 3, 4), "residual to have the memory format of y"),
    (5, torch.ones(2, 5, 3, 3).contiguous(memory_format=torch.channels_last), "residual to have the shape"),
])
def test_bad_forward_arguments(index, value, message):
    args, _ = _forward_args()
    args[index] = value
    with pytest.raises(RuntimeError, match=message):
        torch.ops.resnet_fast.bn_act_forward(*args)


def test_bad_forward_flags():
    args, _ = _forward_args("none")
    args[10] = True  # residual_bn without a residual
    with pytest.raises(RuntimeError, match="residual_bn was given without residual"):
        torch.ops.resnet_fast.bn_act_forward(*args)
    args, _ = _forward_args("none", use_batch_stats=False)
    args[3] = args[4] = None
    with pytest.raises(RuntimeError, match="eval mode needs running_mean and running_var"):
        torch.ops.resnet_fast.bn_act_forward(*args)


def test_bad_backward_arguments():
    args, grad_out = _forward_args("identity_bn")
    _, mean, invstd, _, res_mean, res_invstd, _ = torch.ops.resnet_fast.bn_act_forward(*args)
    y, residual = args[0], args[5]
    good = [grad_out, y, args[1], args[2], mean, invstd, residual, args[6], args[7], res_mean, res_invstd, True,
            True, [True] * 6]
    for index, value, message in [(4, mean[:4], "expected mean to have shape"),
                                  (5, invstd.double(), "expected invstd to be Float"),
                                  (0, grad_out[:1], "expected grad_out to have the shape of y"),
                                  (10, None, "res_mean and res_invstd must be given together"),
                                  (3, torch.ones(3), "expected bias of shape")]:
        bad = list(good)
        bad[index] = value
        with pytest.raises(RuntimeError, match=message):
            torch.ops.resnet_fast.bn_act_backward(*bad)


def test_grad_out_in_the_other_layout_is_accepted(monkeypatch):
    y, params, residual, res_params, grad_out = make_inputs((2, 6, 3, 4), torch.channels_last, torch.float64,
                                                            "identity")
    fwd = _bn.bn_act_forward(y, params, True, 1e-5, True, residual, None)
    nchw_grad = grad_out.contiguous()
    got = _bn.bn_act_backward(nchw_grad, y, params, fwd.norm, True, True, residual, None, None, None, None, "",
                              NEEDS_ALL)
    want = _bn.bn_act_backward(grad_out, y, params, fwd.norm, True, True, residual, None, None, None, None, "",
                               NEEDS_ALL)
    assert torch.equal(got.grad_y, want.grad_y)
    assert torch.equal(got.grad_residual, want.grad_residual)
