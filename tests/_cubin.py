"""Compile Triton kernels to sm_80 / sm_90 cubins on a machine without a GPU, and read what ptxas says.

Shared by the cubin checks of every Triton kernel of the package (tests/test_triton_cubins.py for the
primitives; the fused convolutions use the same helper). Triton asks its active driver for the target;
``FakeTargetDriver`` names one without a CUDA runtime, so ``kernel.warmup(*args, grid=..., **constexprs)``
runs the whole pipeline (TTIR, TTGIR, LLVM IR, PTX, and ptxas with Triton's own binary) and nothing
executes. The arguments are CPU tensors of the right dtypes (only their dtype and 16-byte alignment
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
import subprocess
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("_cubin: TRITON_INTERPRET is set; compile cubins in a process without it "
                       "(interpreted kernels have no compiler pipeline)")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia import compiler as nvidia_compiler  # noqa: E402
from triton.backends.nvidia.driver import CudaDriver  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

ARCHS = (80, 90)


class FakeTargetDriver(CudaDriver):
    """A CUDA driver that reports compute capability ``arch`` and needs no GPU (nothing can be launched)."""

    def __init__(self, arch: int):  # no CudaUtils: it would load libcuda
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        # Triton caches compiled kernels per device: one fake device per architecture, so that a kernel
        # compiled for sm_90 is not handed back when sm_80 is asked for.
        return self.arch

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        import torch
        return torch.device("cuda", self.arch)


_active: dict[str, int | None] = {"arch": None}


def activate(arch: int) -> None:
    """Make a FakeTargetDriver for ``arch`` Triton's active driver (idempotent per arch)."""
    if _active["arch"] != arch:
        driver.set_active(FakeTargetDriver(arch))
        _active["arch"] = arch


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


_USAGE = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, stack frame bytes) of the PTX's kernel, from
    ``ptxas -v`` (Triton's own binary, with the register allocation option Triton passes)."""
    ptxas = nvidia_compiler.get_ptxas(arch).path
    gpu = nvidia_compiler.sm_arch_from_capability(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}", src,
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True)
    log = done.stderr + done.stdout
    regs, spill = _USAGE.search(log), _SPILL.search(log)
    if regs is None or spill is None:
        raise RuntimeError(f"_cubin: unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spill.group(2)), int(spill.group(3)), int(spill.group(1))


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
