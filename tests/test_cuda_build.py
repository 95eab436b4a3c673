"""The CUDA kernels are compiled and registered (no GPU needed).

When the extension was built with its CUDA sources (torch with CUDA and nvcc found), the
compiled library registers a CUDA kernel for each of the four primitives. Without them
the Python layer fills the CUDA key with the torch reference, so the test looks at where
the CUDA kernel was registered: a csrc/cuda source, not Python.
"""
from __future__ import annotations

import pytest
import torch

import resnet_fast  # noqa: F401  (loads the extension, registers the primitives)
from resnet_fast import _extension


def _cuda_registration(op: str) -> str:
    """The dispatcher's line for op's CUDA kernel ('' when there is none)."""
    dump = torch._C._dispatch_dump(f"resnet_fast::{op}")
    return next((line for line in dump.splitlines() if line.startswith("CUDA")), "")


def compiled_with_cuda() -> bool:
    """Whether the CUDA kernels of the compiled library (not the reference fallback) are registered."""
    return _extension.has_kernel("bn_stats", "CUDA") and ".cu" in _cuda_registration("bn_stats")


def test_the_four_primitives_have_compiled_cuda_kernels():
    if not compiled_with_cuda():
        pytest.skip(f"the extension was built without its CUDA kernels ({_extension.status})")
    for op in _extension.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"resnet_fast::{op}", "CUDA"), op
        assert "csrc/cuda/" in _cuda_registration(op), _cuda_registration(op)
