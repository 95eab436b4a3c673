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
              in that order of availability; each of "cuda" and "triton" only once it has
              passed its self-check (resnet_fast/self_check.py) on this GPU, build and
              versions (cached in the cache folder; ``RESNET_FAST_SELF_CHECK=0``: no check).
              A backend that fails it is skipped for the primitives that failed (all of
              them when only a fused op failed), with one warning.

Pick one with ``resnet_fast.set_backend(name)`` or ``RESNET_FAST_BACKEND=name``. The choice
is made when the backend is set: ``primitives(device)`` builds the table of callables for a
device once and keeps it until the next ``set_backend``, so the ops pay a dictionary lookup
per call, not a resolution.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import warnings

import torch

from . import _extension, self_check
from .ops import primitives as _reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_table.json")

_selected = os.environ.get("RESNET_FAST_BACKEND", "auto")
# One backend's callables, by primitive name (a namedtuple: Dynamo builds and reads it when the
# first call after set_backend happens inside torch.compile).
Primitives = collections.namedtuple("Primitives", list(_reference.PRIMITIVES))
_tables: dict[tuple[str, int | None], Primitives] = {}  # (device type, index) -> primitives
# A backend auto may pick: its name, its callables, and whether it must pass the self-check first.
Candidate = collections.namedtuple("Candidate", "name table self_check")
# Self-check verdicts of this process, kept across set_backend: (backend, device type, index) -> verdicts.
_verdicts: dict[tuple[str, str, int | None], dict] = {}
_warned: set[tuple[str, str, int | None]] = set()


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


def table_of(name: str) -> Primitives:
    """All the primitives of backend ``name`` (not checked for usability: see ``backend_status``)."""
    return Primitives(**{op: _implementation(name, op) for op in _reference.PRIMITIVES})


def _auto_candidates(device: torch.device) -> list[Candidate]:
    """The backends ``auto`` may use for tensors on ``device``, usable here, best first, the reference
    last. The compiled CPU kernels are not self-checked (the check is for GPUs the kernels were never
    run on; ``python -m resnet_fast.info --check`` checks them). Internal seam: the tests replace
    this function to put a deliberately broken backend in the list."""
    if device.type == "cpu":
        names, checked = (["cpu"] if _extension.load() else []), False
    else:  # cuda
        status = backend_status()
        names, checked = [b for b in ("cuda", "triton") if status[b][0]], True
    return [Candidate(n, table_of(n), checked) for n in names] + [Candidate("reference", REFERENCE, False)]


def _cannot_check_now(device: torch.device) -> bool:
    """Inside a CUDA graph capture the check cannot run (it synchronizes): the first call outside runs it."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _failed_primitives(verdicts: dict) -> tuple[list[str], str]:
    """(primitives to skip, the first failure as "check: error") of a backend's verdicts. Failing
    primitives are skipped (the fused ops that use them fail with them); a fused op failing while
    every primitive passes cannot be pinned on one, so it skips them all."""
    failures = [v for v in verdicts.values() if not v.passed]
    if not failures:
        return [], ""
    first = f"{failures[0].check}: {failures[0].error}"
    primitives = [v.check for v in failures if v.check in _reference.PRIMITIVES]
    return (primitives or list(_reference.PRIMITIVES)), first


_PENDING = "?"  # _self_check_skips: the check could not run yet


def _self_check_skips(name: str, device_type: str, index: int | None) -> str:
    """The primitives (comma-separated) that ``auto`` must not take from the self-checked backend ``name``
    on the device, running its check at the first call in this process (or reading the cached verdict)
    and warning once if it failed; ``_PENDING`` inside a CUDA graph capture."""
    device = torch.device(device_type, index)
    key = (name, device_type, index)
    verdicts = _verdicts.get(key)
    if verdicts is None:
        if _cannot_check_now(device):
            return _PENDING
        candidates = _auto_candidates(device)
        table = next(c.table for c in candidates if c.name == name)
        verdicts = _verdicts[key] = self_check.verdict(name, table, device)
        skipped, first = _failed_primitives(verdicts)
        if skipped and key not in _warned:
            _warned.add(key)
            names = [c.name for c in candidates]
            rest = names[names.index(name) + 1:]
            warnings.warn(f"resnet_fast: backend {name!r} failed its self-check on {device} "
                          f"({self_check.cache_key(name, device)['device']}): {first}; the auto backend skips it "
                          f"for {', '.join(skipped)} (falling back to {' or '.join(rest)}). "
                          f"`python -m resnet_fast.info --check` shows every result; {self_check.ENV}=0 turns "
                          f"the check off.", RuntimeWarning, stacklevel=2)
    return ",".join(_failed_primitives(verdicts)[0])


def _passes_self_check(candidate: Candidate, op: str, device: torch.device) -> bool:
    """Whether ``auto`` may use ``candidate`` for ``op`` on ``device``: True unless its self-check (run
    once per process, or read from the cache folder) failed for ``op``."""
    if not candidate.self_check or not self_check.enabled():
        return True
    skipped = _self_check_skips(candidate.name, device.type, device.index)
    return skipped == _PENDING or op not in skipped.split(",")


def _checks_pending(device: torch.device) -> bool:
    """Whether ``auto`` has a candidate for ``device`` whose self-check has not run in this process."""
    if get_backend() != "auto" or device.type not in ("cpu", "cuda") or not self_check.enabled():
        return False
    return any(c.self_check and (c.name, device.type, device.index) not in _verdicts
               for c in _auto_candidates(device))


def _auto_choice(op: str, device: torch.device) -> Candidate:
    """The first candidate for ``op`` (the benchmarks' choice first on CUDA) that is not skipped by its self-check."""
    candidates = _auto_candidates(device)
    preferred = _auto_table().get(op) if device.type == "cuda" else None
    order = [c for c in candidates if c.name == preferred] + [c for c in candidates if c.name != preferred]
    for candidate in order:
        if _passes_self_check(candidate, op, device):
            return candidate
    raise AssertionError("unreachable: the reference is never self-checked")


def _auto_names(device_type: str, index: int | None) -> str:
    """The backends ``auto`` takes the primitives from on the device, comma-separated in PRIMITIVES order.

    When the first use happens inside torch.compile, Dynamo calls this for real while tracing
    (assume_constant_result) and bakes the answer into the graph: the candidates' usability, the
    benchmarks' table and the self-check run eagerly, in plain Python (nothing for Dynamo to trace
    there: files, side effects), and a compiled graph never holds an unchecked backend."""
    device = torch.device(device_type, index)
    return ",".join([_auto_choice(op, device).name for op in _reference.PRIMITIVES])


# torch._dynamo.assume_constant_result(_auto_names), which does only this (torch/_dynamo/decorators.py):
# importing Dynamo here would add seconds to every import. tests/test_self_check.py checks that it holds.
_auto_names._dynamo_marked_constant = True
_OPS = tuple(_reference.PRIMITIVES)


def _resolve(op: str, device: torch.device) -> tuple[str, object]:
    """(backend name, callable) of primitive ``op`` on ``device`` under the current selection."""
    name = resolve(op, device)
    if name in BACKENDS:
        return name, _implementation(name, op)
    # A backend the tests put in _auto_candidates.
    return name, next(getattr(c.table, op) for c in _auto_candidates(device) if c.name == name)


def resolve(op: str, device: torch.device) -> str:
    """The backend that runs primitive ``op`` on ``device`` under the current selection."""
    chosen = get_backend()
    if chosen == "auto" and device.type in ("cpu", "cuda"):
        return _auto_names(device.type, device.index).split(",")[_OPS.index(op)]
    if device.type == "cpu":
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
        table = Primitives(**{op: _resolve(op, device)[1] for op in _reference.PRIMITIVES})
        # Not kept while Dynamo traces (no side effects inside an autograd.Function's trace), nor when a
        # check was put off by a CUDA graph capture: the next eager call resolves again.
        if not torch.compiler.is_compiling() and not _checks_pending(device):
            _tables[key] = table
    return table


@contextlib.contextmanager
def table_for(device: torch.device, table: Primitives):
    """Run the ops on ``device`` with the primitives ``table`` inside the block, whatever the selection.
    Internal: the self-check runs the fused ops of the backend it checks through it."""
    device = torch.device(device)
    key = (device.type, device.index)
    previous = _tables.get(key)
    _tables[key] = table
    try:
        yield
    finally:
        if previous is None:
            _tables.pop(key, None)
        else:
            _tables[key] = previous


REFERENCE = Primitives(**_reference.PRIMITIVES)  # plain torch: what forward-mode AD differentiates
