"""Shared harness for the fused-op tests: run fused and eager on the same inputs, compare.

The criterion (flash-attention's): against a float64 eager oracle, the fused op's error
in dtype D may be at most twice eager PyTorch's error in dtype D, plus a floor of a few
units in the last place of D (eager's error can be 0 where both round the same way,
e.g. ReLU zeros). It applies to the output, every gradient and the running statistics.
For float64 the two errors are rounding noise, so the floor (about 1e-12 relative)
decides: the fused ops must equal eager up to summation order.
"""
from __future__ import annotations

import contextlib
import copy

import torch

import resnet_fast

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

# Floor of the criterion, relative to the largest magnitude of the oracle tensor:
# fp32/fp64 sums over <= 1e4 terms in another order differ by a few ulp times
# sqrt(terms); bf16/fp16 results are rounded once on store, and with the few-dozen-element
# reductions of these small test shapes eager's own error is a noisy yardstick (it can
# be lucky by a factor of 2-3), so the floor is a few ulp more than one rounding.
FLOOR_ULPS = {torch.float64: 64, torch.float32: 64, torch.bfloat16: 8, torch.float16: 8}


def bn_state(channels: int, *, seed: int, affine: bool = True, track_running_stats: bool = True) -> dict:
    """BatchNorm tensors in float64 (parameters made non-trivial so every term matters)."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "weight": torch.rand(channels, generator=g, dtype=torch.float64) + 0.5 if affine else None,
        "bias": torch.randn(channels, generator=g, dtype=torch.float64) if affine else None,
        "running_mean": torch.randn(channels, generator=g, dtype=torch.float64) if track_running_stats else None,
        "running_var": torch.rand(channels, generator=g, dtype=torch.float64) + 0.5 if track_running_stats else None,
        "num_batches_tracked": torch.tensor(3) if track_running_stats else None,
    }
    return state


def _cast(value, dtype, grad_names, name, fmt):
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return copy.deepcopy(value)
    t = value.detach().to(dtype)
    if t.dim() == 4 and name in grad_names.activations:
        t = t.contiguous(memory_format=fmt)
    return t.requires_grad_(name in grad_names.differentiable)


class Names:
    def __init__(self, differentiable, activations, buffers, param_dtype_fixed=()):
        self.differentiable = set(differentiable)
        self.activations = set(activations)
        self.buffers = list(buffers)
        # Parameters and buffers that stay float32 in low precision (as under AMP / nn.BatchNorm).
        self.param_dtype_fixed = set(param_dtype_fixed)


def _dtype_of(name, dtype, names: Names):
    low_precision = dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if name in names.param_dtype_fixed and low_precision else dtype


def _inputs(master: dict, dtype, names: Names, fmt):
    return {name: _cast(value, _dtype_of(name, dtype, names), names, name, fmt) for name, value in master.items()}


def _run(fn, inputs: dict, grad_out: torch.Tensor, names: Names):
    leaves = [k for k in sorted(names.differentiable) if inputs.get(k) is not None]
    with torch.set_grad_enabled(bool(leaves)):  # forward-only (inference) when nothing is differentiable
        out = fn(**inputs)
    grads = torch.autograd.grad(out, [inputs[k] for k in leaves], grad_out.to(out.dtype),
                                allow_unused=True) if leaves else ()
    result = {"out": out.detach()}
    result.update({f"grad_{k}": g for k, g in zip(leaves, grads)})
    result.update({k: inputs[k] for k in names.buffers if inputs.get(k) is not None})
    return result, out


def _error(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def compare(fused, eager, master: dict, names: Names, dtype, fmt=torch.contiguous_format, seed=0):
    """Run ``fused`` and ``eager`` (callables taking the tensors of ``master`` by name) and assert the criterion."""
    # The oracle sees the inputs as rounded to the tested dtype, so only the computation's
    # rounding is measured (not the inputs', which would flip ReLU masks at random).
    master = {k: v if not isinstance(v, torch.Tensor) or not v.is_floating_point()
              else _cast(v, _dtype_of(k, dtype, names), names, k, fmt).detach().double()
              for k, v in master.items()}
    probe = eager(**_inputs(master, torch.float64, Names((), names.activations, ()), fmt))
    grad_out = torch.randn(probe.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_out = grad_out.to(dtype).double()  # rounded like the inputs, for the same reason
    oracle, _ = _run(eager, _inputs(master, torch.float64, names, fmt), grad_out, names)
    got, out = _run(fused, _inputs(master, dtype, names, fmt), grad_out, names)
    eager_err = {k: 0.0 for k in oracle}
    if dtype != torch.float64:
        reference, _ = _run(eager, _inputs(master, dtype, names, fmt), grad_out, names)
        eager_err = {k: _error(reference[k], oracle[k]) for k in oracle if reference.get(k) is not None}
        assert out.dtype == reference["out"].dtype, f"output dtype {out.dtype}, eager gives {reference['out'].dtype}"
    assert out.is_contiguous(memory_format=fmt), "output lost the input's memory format"
    for key, truth in oracle.items():
        assert got.get(key) is not None, f"{key}: missing (fused returned no gradient)"
        err = _error(got[key], truth)
        ulp = torch.finfo(got[key].dtype if got[key].is_floating_point() else torch.float64).eps
        floor = FLOOR_ULPS[dtype] * ulp * max(1.0, truth.double().abs().max().item() if truth.numel() else 1.0)
        bound = 2 * eager_err[key] + floor
        assert err <= bound, f"{key}: fused error {err:.3g} > bound {bound:.3g} (eager error {eager_err[key]:.3g})"


# Activation shapes (N, C, H, W) for the conv-free ops: ResNet stage-like plus odd ones
# (C = 3, 63, 130; 7x7 maps; H != W; 1x1 maps with N > 1).
SHAPES = {
    "stage": (2, 64, 8, 8),
    "c3_h5w7": (2, 3, 5, 7),
    "c63_7x7": (2, 63, 7, 7),
    "c130_h3w4": (2, 130, 3, 4),
    "map_1x1": (4, 16, 1, 1),
}


def activation(shape, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift


def with_bn(master: dict, channels: int, seed: int, prefix: str = "", **bn_kwargs) -> dict:
    """Add BatchNorm tensors named ``prefix + name`` to ``master``."""
    master.update({prefix + k: v for k, v in bn_state(channels, seed=seed, **bn_kwargs).items()})
    return master


BN_PARAMS = ("weight", "bias")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def bn_names(prefix=""):
    """(differentiable, buffers, fp32-under-AMP) names of one BatchNorm."""
    params = tuple(prefix + k for k in BN_PARAMS)
    buffers = tuple(prefix + k for k in BN_BUFFERS)
    return params, buffers, params + buffers[:2]


def conv_master_inputs(case, input_name: str, bn_on_input: bool, seed: int = 0, scale: float = 1.0,
                       shift: float = 0.0, **bn_kwargs) -> tuple[dict, dict]:
    """(float64 master inputs, conv keyword arguments) of an op made of a convolution and a BN.

    ``case``: (input shape, out channels, kernel, stride, padding, dilation, groups). The BN
    normalizes the input's channels (``bn_on_input``: bn_relu_conv) or the conv's output
    channels (conv_bn_relu); its tensors are named bn_weight, bn_bias, running_mean, ...
    """
    shape, cout, k, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(seed)
    bn = bn_state(shape[1] if bn_on_input else cout, seed=seed, **bn_kwargs)
    master = {input_name: torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift,
              "weight": torch.randn(cout, shape[1] // groups, k, k, generator=g, dtype=torch.float64) * 0.3,
              "bn_weight": bn["weight"], "bn_bias": bn["bias"], "running_mean": bn["running_mean"],
              "running_var": bn["running_var"], "num_batches_tracked": bn["num_batches_tracked"]}
    return master, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_bn_names(input_name: str) -> Names:
    return Names(differentiable=(input_name, "weight", "bn_weight", "bn_bias"), activations=(input_name,),
                 buffers=("running_mean", "running_var", "num_batches_tracked"),
                 param_dtype_fixed=("bn_weight", "bn_bias", "running_mean", "running_var"))


def saved_bytes(call, exclude=(), keep=lambda t: True) -> int:
    """Bytes of the unique storages autograd saves for backward while ``call()`` runs, leaving out
    storages shared with ``exclude`` (parameters, buffers) and tensors ``keep`` rejects."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded and keep(t):
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call()
    return sum(storages.values())


@contextlib.contextmanager
def selected_backend(name: str):
    """resnet_fast.set_backend(name) for the block, the previous selection restored after."""
    previous = resnet_fast.get_backend()
    resnet_fast.set_backend(name)
    try:
        yield name
    finally:
        resnet_fast.set_backend(previous)
