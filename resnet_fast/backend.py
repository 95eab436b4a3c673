"""Which implementation of the kernel primitives runs, per device and per primitive.

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

Pick one with ``resnet_fast.set_backend(name)`` or ``RESNET_FAST_BACKEND=name``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from typing import Callable

import torch

from . import _extension
from .ops import primitives

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_table.json")

_selected = os.environ.get("RESNET_FAST_BACKEND", "auto")
_forced = threading.local()  # .name: a backend forced for this thread by forced(), or None


def set_backend(name: str) -> None:
    """Route the fused ops through backend ``name`` (one of ``BACKENDS``)."""
    global _selected
    if name not in BACKENDS:
        raise ValueError(f"resnet_fast.set_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    _selected = name


@contextlib.contextmanager
def forced(name: str):
    """Inside, on this thread only: every primitive runs on backend ``name``, whatever
    ``set_backend`` chose (the ops use it to run in plain torch where autograd must see it)."""
    previous = getattr(_forced, "name", None)
    _forced.name = name
    try:
        yield
    finally:
        _forced.name = previous


def get_backend() -> str:
    """The backend chosen by ``set_backend`` (or RESNET_FAST_BACKEND); inside ``forced``, the forced one."""
    name = getattr(_forced, "name", None)
    if name is not None:
        return name
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


def backend_status() -> dict[str, tuple[bool, str]]:
    """Each backend: (usable on this machine, why not)."""
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


def _implementation(backend: str, op: str) -> Callable:
    if backend == "reference":
        return primitives.PRIMITIVES[op]
    if backend == "triton":
        from .kernels import triton as triton_kernels

        return getattr(triton_kernels, op)
    return getattr(torch.ops.resnet_fast, op)


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


def implementation(op: str, device: torch.device) -> Callable:
    """The callable implementing primitive ``op`` for tensors on ``device``."""
    return _implementation(resolve(op, device), op)
