"""Which implementation of the kernel primitives runs, chosen once per device.

Backends:
  "cpu"       C++ kernels (csrc/cpu), CPU tensors.
  "cuda"      C++/CUDA kernels (csrc/cuda), CUDA tensors.
  "triton"    Triton kernels (resnet_fast/kernels/triton); CUDA tensors, or CPU tensors
              under TRITON_INTERPRET=1.
  "reference" plain torch (resnet_fast/ops/primitives.py), any device.
  "auto"      (default) CPU tensors: "cpu" when compiled, else "reference". CUDA tensors:
              per primitive, the faster of "cuda"/"triton" from the table the benchmarks
              write (resnet_fast/backend_table.json), else "cuda", "triton", "reference"
              in that order of availability.

Pick one with ``resnet_fast.set_backend(name)`` or ``RESNET_FAST_BACKEND=name``. The choice
is made when the backend is set: ``primitives(device)`` builds the table of callables for a
device once and keeps it until the next ``set_backend``, so the ops pay a dictionary lookup
per call, not a resolution.
"""
from __future__ import annotations

import collections
import functools
import json
import os

import torch

from . import _extension
from .ops import primitives as _reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_table.json")

_selected = os.environ.get("RESNET_FAST_BACKEND", "auto")
# One backend's callables, by primitive name (a namedtuple: Dynamo builds and reads it when the
# first call after set_backend happens inside torch.compile).
Primitives = collections.namedtuple("Primitives", list(_reference.PRIMITIVES))
_tables: dict[tuple[str, int | None], Primitives] = {}  # (device type, index) -> primitives


def set_backend(name: str) -> None:
    """Route the fused ops through backend ``name`` (one of ``BACKENDS``)."""
    global _selected
    if name not in BACKENDS:
        raise ValueError(f"resnet_fast.set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    _selected = name
    _tables.clear()


def get_backend() -> str:
    """The backend chosen by ``set_backend`` (or RESNET_FAST_BACKEND)."""
    if _selected not in BACKENDS:
        raise ValueError(f"RESNET_FAST_BACKEND={_selected!r} is not a backend; expected one of {BACKENDS}")
    return _selected


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_status() -> tuple[bool, str]:
    """(usable, why not) for the Triton kernels."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return False, f"triton is not importable ({error})"
    try:
        from .kernels import triton as _triton_kernels  # noqa: F401
    except ImportError as error:
        return False, f"the Triton kernels do not import ({error})"
    if not (torch.cuda.is_available() or triton_interpreted()):
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return True, ""


@functools.lru_cache(maxsize=None)
def backend_status() -> dict[str, tuple[bool, str]]:
    """Each backend: (usable on this machine, why not). Fixed for the process's life."""
    ext = _extension.status
    compiled = _extension.load()
    cuda_kernels = _extension.has_cuda_kernels()
    result = {
        "cpu": (compiled, "" if compiled else f"compiled extension not loaded: {ext['error']}"),
        "triton": triton_status(),
        "reference": (True, ""),
    }
    if not cuda_kernels:
        result["cuda"] = (False, "extension built without CUDA kernels" if compiled
                          else "compiled extension not loaded")
    elif not torch.cuda.is_available():
        result["cuda"] = (False, "CUDA kernels built, but no CUDA device is visible")
    else:
        result["cuda"] = (True, "")
    return result


@functools.lru_cache(maxsize=None)
def _auto_table() -> dict[str, str]:
    try:
        with open(_TABLE_PATH) as f:
            return json.load(f).get("choice", {})
    except (OSError, ValueError):
        return {}


def _implementation(name: str, op: str):
    if name == "reference":
        return _reference.PRIMITIVES[op]
    if name == "triton":
        from .kernels import triton as triton_kernels

        return getattr(triton_kernels, op)
    return getattr(torch.ops.resnet_fast, op).default


def resolve(op: str, device: torch.device) -> str:
    """The backend that runs primitive ``op`` on ``device`` under the current selection."""
    chosen = get_backend()
    if device.type == "cpu":
        if chosen == "auto":
            return "cpu" if _extension.load() else "reference"
        if chosen == "cuda":
            raise RuntimeError("resnet_fast: backend 'cuda' needs CUDA tensors; got CPU tensors")
        if chosen == "triton" and not triton_interpreted():
            raise RuntimeError("resnet_fast: backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1 "
                               "(the Triton interpreter); use 'cpu' or 'reference' here")
        if chosen == "cpu" and not _extension.load():
            raise RuntimeError(f"resnet_fast: backend 'cpu' needs the compiled extension, which is not "
                               f"loaded: {_extension.status['error']}")
        return chosen
    if device.type != "cuda":
        return "reference"
    status = backend_status()
    if chosen == "auto":
        preferred = _auto_table().get(op)
        order = ([preferred] if preferred else []) + ["cuda", "triton", "reference"]
        return next(b for b in order if b in status and status[b][0])
    if chosen == "cpu":
        raise RuntimeError("resnet_fast: backend 'cpu' needs CPU tensors; got CUDA tensors")
    usable, why = status[chosen]
    if not usable:
        raise RuntimeError(f"resnet_fast: backend {chosen!r} is not usable: {why}")
    return chosen


def primitives(device: torch.device) -> Primitives:
    """The primitives for tensors on ``device`` (attributes named as in ops/primitives.py), resolved
    at the first call after ``set_backend`` and kept: an error for an unusable choice is raised here."""
    key = (device.type, device.index)
    table = _tables.get(key)
    if table is None:
        table = Primitives(**{op: _implementation(resolve(op, device), op) for op in _reference.PRIMITIVES})
        _tables[key] = table
    return table


REFERENCE = Primitives(**_reference.PRIMITIVES)  # plain torch: what forward-mode AD differentiates
