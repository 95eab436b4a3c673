"""Compile Triton kernels to sm_80 / sm_90 cubins on a machine without a GPU, and read what ptxas says.

The fake-target driver and the ptxas reading are the package's (resnet_fast/kernels/triton/_fake_target.py,
which the fused convolutions' compile_check uses too); this module adds the per-kernel report the
primitives' cubin tests assert on. Triton asks its active driver for the target; ``FakeTargetDriver``
names one without a CUDA runtime, so ``kernel.warmup(*args, grid=..., **constexprs)`` runs the whole
pipeline (TTIR, TTGIR, LLVM IR, PTX, and ptxas with Triton's own binary) and nothing executes. The arguments are CPU tensors of the right dtypes (only their dtype and 16-byte alignment
matter) and ints (only whether they equal 1 or are multiples of 16 matter: Triton specializes on that).

Use it in a process of its own, with ``TRITON_INTERPRET`` unset before triton is imported (interpreted
kernels cannot be compiled), e.g.::

    from _cubin import compile_kernel
    report = compile_kernel(kernel, args, grid=(1, 1, 1), arch=90, constexprs=dict(BLOCK=128), num_warps=4)
    assert report.spill_bytes == 0, report

API:
    FakeTargetDriver(arch)      the CudaDriver subclass; ``activate(arch)`` makes one the active driver
    compile_kernel(...)         -> CubinReport for one (kernel, arguments, constexprs, num_warps, arch)
    compile_configs(...)        -> [CubinReport] for every triton.Config of an Autotuner (or a config list)
    ptxas_usage(ptx, arch)      -> (registers, spill store bytes, spill load bytes, stack bytes) from ptxas -v
    global_access_bytes(ptx)    -> {bytes per access: count} of the ld.global / st.global instructions
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re

from resnet_fast.kernels.triton._fake_target import (ARCHS, FakeTargetDriver, activate,  # noqa: E402,F401
                                                     ptxas_usage)

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("_cubin: TRITON_INTERPRET is set; compile cubins in a process without it "
                       "(interpreted kernels have no compiler pipeline)")


@dataclasses.dataclass
class CubinReport:
    """What one compile produced: ptxas's resource usage and the PTX's global memory access widths."""
    name: str
    arch: int
    num_warps: int
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame
    shared: int  # bytes of shared memory (Triton's metadata)
    loads: dict  # {bytes per ld.global: count}
    stores: dict  # {bytes per st.global: count}

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads

    def row(self) -> str:
        loads = " ".join(f"{b}B:{n}" for b, n in sorted(self.loads.items()))
        return (f"{self.name} sm_{self.arch} w{self.num_warps}: {self.registers} regs, spill {self.spill_stores}/"
                f"{self.spill_loads} B st/ld, stack {self.stack} B, smem {self.shared} B, loads {loads}")


_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[\w:]+)*?(?:\.v(\d))?\.(b|f|u|s)(\d+)\b")


def global_access_bytes(ptx: str) -> tuple[dict, dict]:
    """({bytes: count} of ld.global, {bytes: count} of st.global) in the PTX (16 = one 16-byte vector)."""
    counts = {"ld": collections.Counter(), "st": collections.Counter()}
    for op, vec, _, bits in _ACCESS.findall(ptx):
        counts[op][int(vec or 1) * int(bits) // 8] += 1
    return dict(counts["ld"]), dict(counts["st"])


def compile_kernel(kernel, args: tuple, *, grid: tuple, arch: int, constexprs: dict, num_warps: int,
                   name: str = "", num_stages: int | None = None) -> CubinReport:
    """Compile ``kernel`` (a triton.jit function) for sm_``arch`` with these arguments and constexprs.

    Raises whatever Triton raises on a compile error (ptxas errors included).
    """
    activate(arch)
    options = dict(num_warps=num_warps)
    if num_stages is not None:
        options["num_stages"] = num_stages
    compiled = kernel.warmup(*args, grid=grid, **constexprs, **options)
    ptx = compiled.asm["ptx"]
    registers, spill_st, spill_ld, stack = ptxas_usage(ptx, arch)
    loads, stores = global_access_bytes(ptx)
    return CubinReport(name or kernel.__name__, arch, num_warps, registers, spill_st, spill_ld, stack,
                       int(compiled.metadata.shared), loads, stores)


def compile_configs(kernel, args: tuple, *, grid: tuple, arch: int, constexprs: dict | None = None,
                    configs=None, name: str = "") -> list[CubinReport]:
    """compile_kernel for every config of ``kernel`` (a triton.autotune Autotuner: its ``.configs`` on its
    ``.fn``) or of ``configs`` (triton.Config objects) with a plain jit function."""
    fn = getattr(kernel, "fn", kernel)
    reports = []
    for config in (configs if configs is not None else kernel.configs):
        label = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
        reports.append(compile_kernel(fn, args, grid=grid, arch=arch, constexprs={**(constexprs or {}), **config.kwargs},
                                      num_warps=config.num_warps, num_stages=config.num_stages,
                                      name=f"{name or fn.__name__}[{label}]"))
    return reports
