"""Compile Triton kernels for a GPU this machine does not have (sm_80, sm_90): a fake-target driver.

Triton asks its active driver for the compilation target. A ``CudaDriver`` subclass that names a target
and needs no CUDA runtime lets ``kernel.warmup(*args, grid=..., **constexprs)`` run the whole pipeline
(TTIR, TTGIR, LLVM IR, PTX and, with the ptxas Triton ships, the cubin) on a machine without a GPU. The
arguments are CPU tensors: only their dtypes (and 16-byte alignment) matter, nothing runs.

Usage (in a process that never sets TRITON_INTERPRET, which triton reads at import)::

    with fake_target(90):
        compiled = kernel.warmup(*args, grid=(1,), **constexprs)
    compiled.asm["ptx"], compiled.asm["cubin"], compiled.metadata.shared
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import Iterator

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.driver import CudaDriver
from triton.runtime.driver import driver


class FakeTargetDriver(CudaDriver):
    """A CUDA driver that reports compute capability ``arch`` and device 0, without touching CUDA."""

    def __init__(self, arch: int):  # no CudaDriver.__init__: it loads the CUDA runtime
        self.arch = arch

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device("cuda", 0)


@contextlib.contextmanager
def fake_target(arch: int) -> Iterator[FakeTargetDriver]:
    """Make a FakeTargetDriver for ``arch`` (80, 90, ...) the active driver inside the block."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("fake_target: TRITON_INTERPRET is set; compile in a process without it")
    fake = FakeTargetDriver(arch)
    _forget_targets()
    previous = driver._active  # None until first use; reset_active() would build the real (absent) driver
    driver.set_active(fake)
    try:
        yield fake
    finally:
        driver._active = previous
        _forget_targets()


def _forget_targets() -> None:
    """Drop every JIT function's per-device state: it holds the target of the first compile for device 0, so a
    kernel compiled for sm_80 would be returned again (not recompiled) for sm_90. The disk cache keys on the
    target and stays valid."""
    import gc
    import warnings

    from triton.runtime.jit import JITFunction
    with warnings.catch_warnings():  # isinstance on deprecated module attributes warns
        warnings.simplefilter("ignore")
        functions = [obj for obj in gc.get_objects() if isinstance(obj, JITFunction)]
    for fn in functions:
        fn.device_caches.clear()


def ptxas_path() -> str:
    """The ptxas that Triton ships (triton/backends/nvidia/bin/ptxas)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_report(ptx: str, arch: int) -> dict:
    """Registers, spill stores/loads (bytes) and stack frame of the PTX's kernel, from ``ptxas -v``."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    result = subprocess.run([ptxas_path(), "-v", f"--gpu-name={gpu}", "-o", os.devnull, "-"], input=ptx,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed for {gpu}:\n{result.stderr[-2000:]}")
    text = result.stderr + result.stdout

    def number(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "stack": number(r"(\d+) bytes stack frame")}
