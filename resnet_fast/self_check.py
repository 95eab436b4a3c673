"""Self-check of one backend: its primitives and the fused ops on tiny shapes, against the reference.

A backend whose kernels compute wrong numbers on this GPU, with this build, torch and Triton
(a miscompiled kernel, a driver bug, an architecture the kernels were never run on) must not
silently train a model. ``check_backend`` runs every primitive and every fused op of one
backend on tiny tensors in float32, float64, float16 and bfloat16, contiguous and
channels_last, forward and backward, and compares them with the reference backend (plain
torch, ``ops/primitives.py``). It is used twice:

- ``python -m resnet_fast.info --check`` runs it for every backend usable here and prints
  a table (exit status 1 on a failure);
- ``backend.primitives(device)`` runs it, under ``auto`` on CUDA tensors, for the candidate
  backends ("cuda", "triton") before their first use in a process, keeps the verdict in the
  cache folder (``verdict``: keyed by GPU, extension build, the package's Python kernel and op
  sources, torch and Triton versions) and skips a failing backend for the primitives that
  failed, with one warning. ``RESNET_FAST_SELF_CHECK=0`` turns that off.

The criterion is the tests' (tests/op_testing.py, after flash-attention): against a float64
oracle (the reference backend on the same inputs upcast), the checked backend's error in
dtype D may be at most twice the reference backend's own error in D, plus a floor of a few
units in the last place of the output's dtype (64 for float32/float64: sums in another order;
8 for float16/bfloat16: one rounding on store, and one more where a conv follows). A wrong
kernel errs by O(1); so this criterion neither flakes across GPUs nor lets an indexing bug
through. The shapes are tiny (N=2, C=5, 3x4 maps: channel and spatial tails in every tile),
so the whole check is a few thousand small launches (with the reference's) and about one
synchronization per case: well under a second on a GPU once the kernels are compiled (Triton
compiles each kernel variant the first time on a machine and keeps it in its own cache). It
uses no autotuning and no global random state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import platform
import tempfile
import time
from typing import Callable, Iterator, Optional

import torch

from .ops import primitives as _reference

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
N, C, H, W = 2, 5, 3, 4  # C = 5 and 3 x 4 maps: partial channel and spatial tiles in every kernel
FUSED_OPS = ("bn_relu", "bn_add_relu", "squeeze_excite", "conv_bn_relu", "bn_relu_conv")
CHECKS = tuple(_reference.PRIMITIVES) + FUSED_OPS
# Floor of the criterion in units of the last place of the compared tensor's dtype (module docstring).
FLOOR_ULPS = {torch.float64: 64, torch.float32: 64, torch.float16: 8, torch.bfloat16: 8}
ENV = "RESNET_FAST_SELF_CHECK"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one check (a primitive or a fused op) of one backend; ``error`` is "" when it passed."""

    backend: str
    check: str
    error: str

    @property
    def passed(self) -> bool:
        return not self.error


def enabled() -> bool:
    """Whether ``auto`` runs the self-check before using a backend (``RESNET_FAST_SELF_CHECK=0``: no)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------- inputs
def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """BatchNorm parameters and running statistics stay float32 for float16/bfloat16 inputs (as under AMP)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Inputs:
    """Deterministic tensors for one (dtype, layout, device), drawn in float64 from a private generator
    and rounded to their dtype, so the float64 oracle sees exactly the rounded values."""

    def __init__(self, dtype: torch.dtype, fmt: torch.memory_format, device: torch.device, seed: int):
        self.dtype, self.fmt, self.device = dtype, fmt, device
        self.acc = _reference.acc_dtype(dtype)
        self._gen = torch.Generator().manual_seed(seed)

    def _draw(self, shape, scale=1.0, offset=0.0, positive=False) -> torch.Tensor:
        t = torch.randn(shape, generator=self._gen, dtype=torch.float64)
        t = t.abs() + 0.25 if positive else t
        return t * scale + offset

    def act(self, shape=(N, C, H, W), scale=1.0, offset=0.0) -> torch.Tensor:
        """An activation in the checked dtype and layout."""
        return self._draw(shape, scale, offset).to(self.dtype).to(self.device).contiguous(memory_format=self.fmt)

    def acc_vec(self, *shape, positive=False) -> torch.Tensor:
        """A coefficient or statistic in the accumulation dtype."""
        return self._draw(shape, positive=positive).to(self.acc).to(self.device)

    def param(self, *shape, positive=False, scale=1.0) -> torch.Tensor:
        return self._draw(shape, scale=scale, positive=positive).to(_param_dtype(self.dtype)).to(self.device)

    def weight(self, *shape, scale=0.5) -> torch.Tensor:
        """A convolution / SE weight, in the checked dtype."""
        return self._draw(shape, scale=scale).to(self.dtype).to(self.device)


def _upcast(value):
    """The oracle's copy of an argument: floating tensors in float64, layout kept, anything else as is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(torch.float64)  # .to keeps the strides (preserve_format)
    if isinstance(value, dict):
        return {k: _upcast(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_upcast(v) for v in value)
    return value


# ----------------------------------------------------------------------------- the cases
def _primitive_cases(inp: _Inputs, first_layout: bool) -> Iterator[tuple[str, str, tuple]]:
    """(primitive, case, arguments): every primitive with each optional-argument combination the fused ops use."""
    y = inp.act(scale=1.5, offset=0.3)
    residual, grad_out = inp.act(), inp.act()
    scale, shift = inp.acc_vec(N, C), inp.acc_vec(N, C)
    res_scale, res_shift = inp.acc_vec(C), inp.acc_vec(C)
    center, res_center = inp.acc_vec(C), inp.acc_vec(C)
    k_g, k_0, k_y = inp.acc_vec(N, C), inp.acc_vec(N, C), inp.acc_vec(C)
    res_k = (inp.acc_vec(C), inp.acc_vec(C), inp.acc_vec(C))
    yield "bn_stats", "", (y,)
    yield "scale_shift_act", "relu", (y, scale, shift, None, None, None, True)
    yield "scale_shift_act", "residual", (y, scale, shift, residual, None, None, False)
    yield "scale_shift_act", "residual bn, relu", (y, scale, shift, residual, res_scale, res_shift, True)
    yield "scale_shift_act_backward_reduce", "relu", (grad_out, y, scale, shift, None, None, None, True, center, None)
    yield "scale_shift_act_backward_reduce", "residual, relu", (grad_out, y, scale, shift, residual, None, None, True,
                                                                center, None)
    yield "scale_shift_act_backward_reduce", "residual bn, relu", (grad_out, y, scale, shift, residual, res_scale,
                                                                   res_shift, True, center, res_center)
    yield "scale_shift_act_backward_apply", "relu", (grad_out, y, scale, shift, None, None, None, True, k_g, k_0, k_y,
                                                     center, None, None, None, None)
    yield "scale_shift_act_backward_apply", "residual bn, relu", (grad_out, y, scale, shift, residual, res_scale,
                                                                  res_shift, True, k_g, k_0, k_y, center, *res_k,
                                                                  res_center)
    if not first_layout:  # the finalize steps see no activation: once per dtype is enough
        return
    mean, var = inp.acc_vec(C), inp.acc_vec(C, positive=True)
    weight, bias = inp.param(C, positive=True), inp.param(C)
    yield "bn_finalize", "affine, per sample", (mean, var, weight, bias, 1e-5, N * H * W, N)
    yield "bn_finalize", "no affine", (mean, var, None, None, 1e-3, N * H * W, 0)
    invstd = inp.acc_vec(C, positive=True)
    yield "bn_backward_finalize", "training, per sample", (inp.acc_vec(N, C), inp.acc_vec(N, C), invstd,
                                                           inp.param(C, positive=True), N * H * W, N, True)
    yield "bn_backward_finalize", "eval, no affine", (inp.acc_vec(C), inp.acc_vec(C), invstd, None, N * H * W, 0,
                                                      False)


def _bn_tensors(inp: _Inputs, prefix: str = "") -> dict:
    return {prefix + "weight": inp.param(C, positive=True), prefix + "bias": inp.param(C),
            prefix + "running_mean": inp.param(C), prefix + "running_var": inp.param(C, positive=True)}


def _fused_cases(inp: _Inputs) -> Iterator[tuple[str, str, Callable, dict, tuple[str, ...]]]:
    """(op, case, fn(**tensors) -> output, tensors, names of the tensors to differentiate)."""
    from . import ops

    bn = ("weight", "bias")
    tensors = {"x": inp.act(scale=1.5, offset=0.3), **_bn_tensors(inp)}
    yield "bn_relu", "training", lambda **t: ops.bn_relu(**t, training=True), tensors, ("x",) + bn
    tensors = {"x": inp.act(scale=1.5, offset=0.3), **_bn_tensors(inp)}
    yield "bn_relu", "eval", lambda **t: ops.bn_relu(**t, training=False), tensors, ("x",) + bn

    tensors = {"y": inp.act(scale=1.5, offset=0.3), **_bn_tensors(inp), "identity": inp.act()}
    id_bn = _bn_tensors(inp, "id_")

    def bn_add_relu(id_weight, id_bias, id_running_mean, id_running_var, **t):
        return ops.bn_add_relu(**t, training=True,
                               identity_bn=(id_weight, id_bias, id_running_mean, id_running_var))

    yield ("bn_add_relu", "training, identity bn", bn_add_relu, {**tensors, **id_bn},
           ("y", "identity") + bn + ("id_weight", "id_bias"))

    hidden = 3
    tensors = {"y": inp.act(scale=1.5, offset=0.3), **_bn_tensors(inp), "identity": inp.act(),
               "fc1_weight": inp.weight(hidden, C, 1, 1), "fc1_bias": inp.weight(hidden, scale=0.1),
               "fc2_weight": inp.weight(C, hidden, 1, 1), "fc2_bias": inp.weight(C, scale=0.1)}
    yield ("squeeze_excite", "training", lambda **t: ops.squeeze_excite(**t, training=True), tensors,
           ("y", "identity", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias") + bn)

    c_in = 3
    tensors = {"x": inp.act((N, c_in, H, W)), "weight": inp.weight(C, c_in, 3, 3),
               "bn_weight": inp.param(C, positive=True), "bn_bias": inp.param(C), "running_mean": inp.param(C), "running_var": inp.param(C, positive=True),
               "residual": inp.act()}
    yield ("conv_bn_relu", "training, residual", lambda **t: ops.conv_bn_relu(**t, padding=1, training=True), tensors,
           ("x", "weight", "bn_weight", "bn_bias", "residual"))

    c_out = 4
    tensors = {"y": inp.act(scale=1.5, offset=0.3), "bn_weight": inp.param(C, positive=True), "bn_bias": inp.param(C),
               "running_mean": inp.param(C), "running_var": inp.param(C, positive=True),
               "weight": inp.weight(c_out, C, 3, 3)}
    yield ("bn_relu_conv", "training", lambda **t: ops.bn_relu_conv(**t, padding=1, training=True), tensors,
           ("y", "bn_weight", "bn_bias", "weight"))


# ----------------------------------------------------------------------------- running and comparing
def _tensors_of(result) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else [t for t in result if isinstance(t, torch.Tensor)]


def _run_primitive(fn, args) -> list[torch.Tensor]:
    with torch.no_grad():
        return _tensors_of(fn(*args))


def _run_fused(fn, tensors: dict, wanted: tuple[str, ...], seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """[output, gradients of ``wanted``..., running statistics after the call], on fresh copies of ``tensors``;
    the output's gradient is drawn from ``seed`` and rounded to the checked ``dtype`` (the oracle's too)."""
    inputs = {k: v.detach().clone().requires_grad_(k in wanted) for k, v in tensors.items()}
    out = fn(**inputs)
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype).to(out.dtype).to(out.device)
    grads = torch.autograd.grad(out, [inputs[k] for k in wanted], grad_out)
    stats = [inputs[k].detach() for k in _stat_names(tensors)]
    return [out.detach(), *grads, *stats]


def _stat_names(tensors: dict) -> list[str]:
    return [k for k in sorted(tensors) if "running_" in k]


def _fused_labels(tensors: dict, wanted: tuple[str, ...]) -> list[str]:
    """Names of ``_run_fused``'s tensors, for the error message."""
    return ["out"] + [f"grad {k}" for k in wanted] + _stat_names(tensors)


def _compare(got: list[torch.Tensor], ref: list[torch.Tensor], truth: list[torch.Tensor],
             labels: Optional[list[str]] = None) -> str:
    """"" when every tensor of ``got`` meets the criterion (module docstring), else what failed
    (``labels`` name the tensors; by default "output <i>"). One device synchronization per call."""
    labels = labels or [f"output {i}" for i in range(len(ref))]
    if len(got) != len(ref):
        return f"returned {len(got)} tensors, the reference {len(ref)}"
    measured = []  # (label, dtype, [error, the reference's error, scale]) of each non-empty tensor
    for label, a, r, t in zip(labels, got, ref, truth):
        if a.shape != r.shape or a.dtype != r.dtype:
            return f"{label}: {a.dtype} {tuple(a.shape)}, the reference gives {r.dtype} {tuple(r.shape)}"
        if a.dim() == 4 and a.numel() and a.stride() != r.stride():
            return f"{label}: strides {a.stride()}, the reference's {r.stride()} (memory format lost)"
        if a.numel():
            t = t.double()
            measured.append((label, a.dtype, torch.stack([(a.double() - t).abs().max(), (r.double() - t).abs().max(),
                                                          t.abs().max()])))
    if not measured:
        return ""
    values = torch.stack([m[2] for m in measured]).tolist()
    for (label, dtype, _), (err, ref_err, scale) in zip(measured, values):
        bound = 2 * ref_err + FLOOR_ULPS.get(dtype, 64) * torch.finfo(dtype).eps * max(1.0, scale)
        if not err <= bound:  # NaN fails too
            return f"{label}: error {err:.3g} > bound {bound:.3g} (the reference's error {ref_err:.3g})"
    return ""


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Plain eager autograd, whatever the caller's context (the first use of a backend can happen under
    no_grad, inference_mode, autocast or a torch.func transform)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch._C._DisableFuncTorch())
        for device_type in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def check_backend(name: str, table, device: torch.device) -> dict[str, Verdict]:
    """Check the backend ``name``, whose primitives are ``table`` (a ``backend.Primitives``), on ``device``.

    Returns a ``Verdict`` per check (each primitive, then each fused op), in ``CHECKS`` order. A check
    stops at its first failing case; its error names the dtype, layout and case. Exceptions raised by
    the backend are failures, not errors of this function.
    """
    from . import backend

    device = torch.device(device)
    reference = backend.REFERENCE
    errors: dict[str, str] = {}

    def run_case(check, where, attempt):
        if errors.get(check):
            return
        try:
            error = attempt()
        except Exception as exc:  # the backend raised: that is its verdict
            error = _describe(exc)
        if error:
            errors[check] = f"{where}: {error}"

    with _isolated():
        for dtype in DTYPES:
            for index, (layout, fmt) in enumerate(LAYOUTS.items()):
                inp = _Inputs(dtype, fmt, device, seed=17 * DTYPES.index(dtype) + index)
                for op, case, args in _primitive_cases(inp, first_layout=index == 0):
                    where = f"{str(dtype).replace('torch.', '')} {layout}" + (f", {case}" if case else "")
                    run_case(op, where, lambda: _compare(_run_primitive(getattr(table, op), args),
                                                         _run_primitive(getattr(reference, op), args),
                                                         _run_primitive(getattr(reference, op), _upcast(args))))
                for seed, (op, case, fn, tensors, wanted) in enumerate(_fused_cases(inp)):
                    where = f"{str(dtype).replace('torch.', '')} {layout}, {case}"

                    def attempt(fn=fn, tensors=tensors, wanted=wanted, seed=seed, dtype=dtype):
                        with backend.table_for(device, reference):
                            ref = _run_fused(fn, tensors, wanted, seed, dtype)
                            truth = _run_fused(fn, _upcast(tensors), wanted, seed, dtype)
                        with backend.table_for(device, table):
                            got = _run_fused(fn, tensors, wanted, seed, dtype)
                        return _compare(got, ref, truth, _fused_labels(tensors, wanted))

                    run_case(op, where, attempt)
    return {check: Verdict(name, check, errors.get(check, "")) for check in CHECKS}


# ----------------------------------------------------------------------------- the cached verdict
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return device.type


def _extension_build() -> str:
    """What identifies the compiled kernels in use: the library's path (the JIT cache folder names the
    source hash), size and modification time; "none" without one."""
    from . import _extension

    path = _extension.status.get("path") if _extension.load() else None
    if not path:
        return "none"
    try:
        stat = os.stat(path)
    except OSError:
        return path
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _python_sources() -> str:
    """Hash of the Python that runs on a device: the Triton kernels, the reference and the fused ops
    (an edited Triton kernel has no extension build to change the key)."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for pattern in ("kernels/**/*.py", "ops/*.py", "self_check.py"):
        for path in sorted(glob.glob(os.path.join(here, pattern), recursive=True)):
            digest.update(os.path.relpath(path, here).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def cache_key(name: str, device: torch.device) -> dict:
    """What a verdict depends on: the backend, the GPU (or CPU), the extension build, the Python sources
    (Triton kernels, ops, this check), torch's and Triton's versions."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from . import backend

    return {"backend": name, "device": _device_name(torch.device(device)), "extension": _extension_build(),
            "sources": _python_sources(), "torch": torch.__version__, "triton": triton_version,
            "interpreted": backend.triton_interpreted()}


def _cache_path(key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    from . import _extension

    return os.path.join(_extension.cache_root(), "self_check", f"{key['backend']}-{digest}.json")


def _load(path: str, key: dict) -> Optional[dict[str, Verdict]]:
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored.get("key") != key:
            return None
        return {check: Verdict(key["backend"], check, str(error)) for check, error in stored["errors"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def _store(path: str, key: dict, verdicts: dict[str, Verdict], seconds: float) -> None:
    """Write atomically (several processes may check at once); an unwritable cache only costs a rerun."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "seconds": round(seconds, 3),
                       "errors": {c: v.error for c, v in verdicts.items()}}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def verdict(name: str, table, device: torch.device) -> dict[str, Verdict]:
    """``check_backend``'s verdicts, read from the cache folder when this backend was already checked with
    the same cache key, else computed and stored there."""
    key = cache_key(name, device)
    path = _cache_path(key)
    cached = _load(path, key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    verdicts = check_backend(name, table, device)
    _store(path, key, verdicts, time.perf_counter() - start)
    return verdicts
