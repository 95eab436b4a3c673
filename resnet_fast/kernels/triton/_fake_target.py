"""Compile Triton kernels for a GPU this machine does not have (sm_80, sm_90): a fake-target driver.

Triton asks its active driver for the compilation target. A ``CudaDriver`` subclass that names a
target and needs no CUDA runtime lets ``kernel.warmup(*args, grid=..., **constexprs)`` run the whole
pipeline (TTIR, TTGIR, LLVM IR, PTX and, with the ptxas Triton ships, the cubin) on a machine without
a GPU; nothing executes. The arguments are CPU tensors of the right dtypes (only their dtype and
16-byte alignment matter) and ints (only whether they equal 1 or are multiples of 16 matter: Triton
specializes on that).

One module for every cubin check of the package: the primitives' (tests/_cubin.py,
tests/test_triton_cubins.py, benchmarks/triton_host_time.py) and the fused convolutions'
(conv/compile_check.py). Use it in a process that never sets TRITON_INTERPRET (triton reads it at
import; interpreted kernels have no compiler pipeline)::

    with fake_target(90):
        compiled = kernel.warmup(*args, grid=(1,), **constexprs)
    ptxas_report(compiled.asm["ptx"], 90)   # registers, spills, stack
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from typing import Iterator

from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia_compiler
from triton.backends.nvidia.driver import CudaDriver
from triton.runtime.driver import driver

ARCHS = (80, 90)


def _refuse_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("fake target: TRITON_INTERPRET is set; compile cubins in a process without it "
                           "(interpreted kernels have no compiler pipeline)")


class FakeTargetDriver(CudaDriver):
    """A CUDA driver that reports compute capability ``arch`` and needs no GPU (nothing can be launched)."""

    def __init__(self, arch: int):  # no CudaDriver.__init__: it loads the CUDA runtime
        self.arch = arch

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self) -> int:
        # Triton caches compiled kernels per device: one fake device per architecture, so that a kernel
        # compiled for sm_90 is not handed back when sm_80 is asked for.
        return self.arch

    def set_current_device(self, device) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_device_capability(self, device=None) -> tuple[int, int]:
        return divmod(self.arch, 10)

    def get_active_torch_device(self):
        import torch
        return torch.device("cuda", self.arch)


_active: dict[str, int | None] = {"arch": None}


def activate(arch: int) -> None:
    """Make a FakeTargetDriver for ``arch`` Triton's active driver for the rest of the process
    (idempotent per arch)."""
    _refuse_interpreter()
    if _active["arch"] != arch:
        driver.set_active(FakeTargetDriver(arch))
        _active["arch"] = arch


@contextlib.contextmanager
def fake_target(arch: int) -> Iterator[FakeTargetDriver]:
    """A FakeTargetDriver for ``arch`` as the active driver inside the block, the previous one after."""
    _refuse_interpreter()
    previous, previous_arch = driver._active, _active["arch"]  # None until first use: reset_active() would
    fake = FakeTargetDriver(arch)                               # build the real (absent) driver
    driver.set_active(fake)
    _active["arch"] = arch
    try:
        yield fake
    finally:
        driver._active, _active["arch"] = previous, previous_arch


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
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
    log = done.stderr + done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for {gpu}:\n{log[-2000:]}")
    regs, spill = _USAGE.search(log), _SPILL.search(log)
    if regs is None or spill is None:
        raise RuntimeError(f"fake target: unexpected ptxas -v output:\n{log}")
    return int(regs.group(1)), int(spill.group(2)), int(spill.group(3)), int(spill.group(1))


def ptxas_report(ptx: str, arch: int) -> dict:
    """ptxas_usage as a dict: registers, spill_stores, spill_loads, stack (bytes)."""
    registers, spill_stores, spill_loads, stack = ptxas_usage(ptx, arch)
    return {"registers": registers, "spill_stores": spill_stores, "spill_loads": spill_loads, "stack": stack}
