"""What to compile and how: shared by setup.py (ahead of time) and _extension.py (JIT).

Kept free of resnet_fast imports so setup.py can load it by path.
"""
from __future__ import annotations

import glob
import os
import shutil

DEFAULT_CUDA_ARCHS = "8.0;9.0"  # Ampere and Hopper; CUDA 13 builds sm_75 and newer only


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME/$CUDA_PATH, then /usr/local/cuda, then nvcc on PATH.

    torch would guess /usr/local from /usr/local/bin/nvcc, where lib64/libcudart is not,
    and the link fails; so a toolkit that has its own nvcc is preferred.
    """
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def cuda_build_status() -> tuple[bool, str]:
    """(build the CUDA kernels?, why not). Never asks whether a GPU is present."""
    if os.environ.get("RESNET_FAST_NO_CUDA", "0") not in ("", "0"):
        return False, "RESNET_FAST_NO_CUDA is set"
    import torch

    if not torch.version.cuda:
        return False, "this torch has no CUDA (torch.version.cuda is None)"
    if find_cuda_home() is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, ""


def prepare_cuda_environment() -> None:
    """Point torch.utils.cpp_extension at the right toolkit and archs; call before importing it."""
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if not torch.cuda.is_available():  # with a GPU, torch picks its arch itself
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS


def extension_sources(root: str, with_cuda: bool | None = None):
    """(absolute sources, extension kwargs, with_cuda, why not); ``root`` holds csrc/ or is it."""
    why = ""
    if with_cuda is None:
        with_cuda, why = cuda_build_status()
    csrc = os.path.join(root, "csrc") if os.path.isdir(os.path.join(root, "csrc")) else root
    sources = [os.path.join(csrc, "ops.cpp")] + sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    # No contraction of a * b + c into a fused multiply-add: results round like torch's
    # elementwise ops, alike in every kernel build, and like the CUDA finalize kernels
    # (csrc/bn_algebra.h).
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    kwargs = {"extra_compile_args": {"cxx": cxx_flags}, "extra_link_args": ["-fopenmp"]}
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo"]  # no fast-math: BN must match eager
        kwargs["define_macros"] = [("RESNET_FAST_WITH_CUDA", "1")]
    return sources, kwargs, with_cuda, why
