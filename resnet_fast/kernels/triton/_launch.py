"""Launching the primitives' kernels with little host work: one plan per input signature, direct launches.

A primitive's launch parameters (tiles, grids, H*W splits, the integer arguments, the constexprs) depend
only on its inputs' shapes, strides, dtypes, devices and flags, and its argument checks only on those
too. So each launcher keys a small dict by exactly these (``signature``) and, on a hit, skips the
checks and the planning: the inputs are the same kind the plan was checked and made for. A miss runs
the launcher's full path (every check with its one-line error, the conversions of the contract's
optional copies, the planning) and stores the plan when the inputs needed no copy.

A launch (``KernelLaunch``) then bypasses ``JITFunction.run`` (argument binding, specialization, cache
key: ~10 us a launch in Triton 3.6-3.8) once it has run once: it keeps the ``CompiledKernel`` that the
first ``kernel[grid](...)`` returned and calls its launcher as ``JITFunction.run`` does,
``compiled.run(grid..., stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args)``
with every argument in the kernel's order, constexprs included (the launcher drops them; the same
convention in Triton 3.6 and 3.8). That handle is valid for what the compiled kernel was specialized on:
the constexprs, the integer arguments' values (both fixed by the plan), the tensors' dtypes (in the key),
the device (in the key) and each pointer's 16-byte alignment, which is checked per call (an unaligned
pointer, or a launch hook set for a profiler, takes ``kernel[grid]`` again).

Only plain eager calls take these caches (``eager(y)``): under torch.compile (Dynamo), a dispatch mode
(make_fx, FakeTensorMode) or for a tensor subclass, the launchers run their full path and launch
through ``wrap_triton`` (``_common.launch``), as before. Under the Triton interpreter (CPU tensors,
``TRITON_INTERPRET=1``) the plans are cached the same way and every launch is ``kernel[grid]``.
"""
from __future__ import annotations

import torch

from ._common import INTERPRETED, on_device
from ._common import launch as traced

Tensor = torch.Tensor

try:  # Triton >= 3.4: launch hooks are HookChains (empty when no profiler is attached)
    from triton import knobs as _knobs
    from triton.knobs import HookChain as _HookChain
except ImportError:  # pragma: no cover - older Triton: no direct launches
    _knobs = None
    _HookChain = None

_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack

# Every launcher's plans, so that clear() empties them all (tests, the tile-table benchmark).
_PLAN_CACHES: list[dict] = []
# Plans kept per launcher: more than any model has (signature) kinds of calls; a full cache is emptied.
MAX_PLANS = 4096


def plan_cache() -> dict:
    """A new dict of plans for one launcher, registered so that ``clear`` empties it."""
    cache: dict = {}
    _PLAN_CACHES.append(cache)
    return cache


def remember(cache: dict, key, plan):
    """Store a plan (a bounded dict: cleared when full, which no real model reaches)."""
    if len(cache) >= MAX_PLANS:
        cache.clear()
    cache[key] = plan
    return plan


def clear() -> None:
    """Forget every plan (call after changing what planning reads, e.g. ``_tiles._TABLE``)."""
    for cache in _PLAN_CACHES:
        cache.clear()


def eager(y: Tensor) -> bool:
    """Whether this call may use the plan caches and direct launches: not traced by Dynamo, no dispatch
    mode active (make_fx, FakeTensorMode: they must see the launch through wrap_triton) and a plain tensor."""
    return not _is_compiling() and not _dispatch_modes() and y.__class__ is Tensor


def signature(t: Tensor | None):
    """What of a tensor decides the checks and the plan: shape, strides, dtype, device index (-1: CPU)."""
    if t is None:
        return None
    return t.shape, t.stride(), t.dtype, t.get_device()


class DeviceGuard:
    """``with DeviceGuard(index):`` makes CUDA device ``index`` current for a direct launch and restores the
    previous one after (Triton launches on the current device); nothing for index -1 (CPU tensors).
    torch.cuda.device's own primitives, without its Python device-object handling."""

    __slots__ = ("index", "previous")

    def __init__(self, index: int):
        self.index = index

    def __enter__(self):
        self.previous = _exchange_device(self.index)

    def __exit__(self, *exc):
        _maybe_exchange_device(self.previous)


_exchange_device = getattr(torch.cuda, "_exchange_device", None)
_maybe_exchange_device = getattr(torch.cuda, "_maybe_exchange_device", None)
if _exchange_device is None or _maybe_exchange_device is None:  # pragma: no cover - older torch
    def _exchange_device(index: int) -> int:
        if index < 0:
            return -1
        previous = torch.cuda.current_device()
        torch.cuda.set_device(index)
        return previous

    def _maybe_exchange_device(index: int) -> int:
        if index >= 0:
            torch.cuda.set_device(index)
        return index


def _hooks_idle() -> bool:
    """No launch hook is set (a profiler's hooks want the launch metadata JITFunction.run builds)."""
    runtime = _knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    return ((enter is None or (enter.__class__ is _HookChain and not enter.calls))
            and (leave is None or (leave.__class__ is _HookChain and not leave.calls)))


class Plan:
    """Base of a launcher's plan: where its launches run. ``direct``: made in plain eager (cached, direct
    launches under a DeviceGuard); else launched through wrap_triton under ``_common.on_device``."""

    __slots__ = ("device", "direct")

    def __init__(self, y: Tensor, direct: bool):
        self.direct = direct
        self.device = y.get_device() if direct else -1

    def guard(self, y: Tensor):
        return DeviceGuard(self.device) if self.direct else on_device(y)


class KernelLaunch:
    """One launch of ``kernel`` with everything fixed but its pointer arguments.

    ``scalars`` are the integer (and float) arguments that follow the pointers, ``constexprs`` the
    constexpr arguments after them, by name, and the launch options (num_warps). ``launch(*pointers)``
    launches on the current device and stream; ``traced(*pointers)`` launches through wrap_triton.
    """

    __slots__ = ("kernel", "grid", "scalars", "constexprs", "is_traced", "_tail", "_handle")

    def __init__(self, kernel, grid: tuple, scalars: tuple, constexprs: dict, *, traced: bool = False):
        self.kernel = kernel
        self.is_traced = traced  # every call launches through wrap_triton (plans made outside plain eager)
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.scalars = tuple(scalars)
        self.constexprs = constexprs
        self._tail = None  # scalars + constexpr values in the kernel's parameter order (direct launches)
        self._handle = None  # (launcher, function, packed metadata, stream getter, device) once compiled

    def traced(self, *pointers) -> None:
        """Launch through ``_common.launch`` (wrap_triton on a GPU): what torch.compile traces into."""
        traced(self.kernel)[self.grid](*pointers, *self.scalars, **self.constexprs)

    def __call__(self, *pointers) -> None:
        if self.is_traced:
            return self.traced(*pointers)
        handle = self._handle
        if handle is not None:
            bits = 0
            for p in pointers:
                bits |= p.data_ptr()
            if not bits & 15 and _hooks_idle():
                run, function, metadata, stream, device = handle
                grid = self.grid
                run(grid[0], grid[1], grid[2], stream(device), function, metadata, None, None, None, *pointers,
                    *self._tail)
                return
        compiled = self.kernel[self.grid](*pointers, *self.scalars, **self.constexprs)
        if handle is None and not INTERPRETED and _knobs is not None:
            self._keep(compiled, pointers)

    def _keep(self, compiled, pointers) -> None:
        """Keep the compiled kernel's launcher when it can be replayed (see the module docstring)."""
        if not hasattr(compiled, "packed_metadata") or not hasattr(compiled, "run"):
            return  # e.g. a future of Triton's async compile mode: keep using kernel[grid]
        bits = 0
        for p in pointers:
            bits |= p.data_ptr()
        if bits & 15:  # compiled for an unaligned pointer: replay only what aligned calls compile to
            return
        names = self.kernel.arg_names
        rest = names[len(pointers) + len(self.scalars):]
        if [names[i] for i in self.kernel.constexprs] != list(rest) or set(rest) - set(self.constexprs):
            return  # not (pointers, scalars, constexprs) in this order: keep using kernel[grid]
        from triton.runtime.driver import driver

        active = driver.active
        self._tail = self.scalars + tuple(self.constexprs[name] for name in rest)
        self._handle = (compiled.run, compiled.function, compiled.packed_metadata, active.get_current_stream,
                        active.get_current_device())
