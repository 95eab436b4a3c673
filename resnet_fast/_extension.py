"""Loading the compiled kernels: ahead-of-time build, else JIT, else none (with a warning).

Order:
1. ``resnet_fast._C`` built by ``pip install --no-build-isolation .``;
2. if absent, or built for another torch (``undefined symbol``), compile the shipped
   sources with ninja against the runtime torch into a cache keyed by torch version,
   CUDA use, the sources' folder and a hash of the sources (``RESNET_FAST_CACHE``, default
   ``~/.cache/resnet_fast``), printing one line while it compiles;
3. if that fails too (no compiler), warn once with the cause; the ops then run on the
   Triton or reference backends, whose schemas ``resnet_fast.ops.primitives`` defines.

``RESNET_FAST_JIT=0`` disables step 2.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import platform
import sys
import warnings

import torch

from . import _build_config

# The primitives (schemas: resnet_fast/ops/primitives.py, defined before the library loads).
OPS = ("bn_stats", "scale_shift_act", "scale_shift_act_backward_reduce", "scale_shift_act_backward_apply",
       "bn_finalize", "bn_backward_finalize")

# What happened while loading, for `python -m resnet_fast.info`. "cuda_kernels": whether the
# compiled library registered CUDA kernels for every primitive (read at load time, before
# resnet_fast.ops fills missing dispatch keys with the torch reference).
status = {"loaded": False, "how": None, "error": None, "path": None, "cuda_kernels": False}


def _source_root() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "_csrc"), os.path.join(os.path.dirname(here), "csrc")):
        if os.path.exists(os.path.join(candidate, "ops.cpp")):
            return candidate
    return None


def _cache_dir(sources: list[str], with_cuda: bool) -> str:
    digest = hashlib.sha256()
    # The headers too: most of the kernel code lives in them (csrc/cpu/*_kernel.h, csrc/cuda/*.cuh).
    root = os.path.dirname(next(os.path.abspath(s) for s in sources if os.path.basename(s) == "ops.cpp"))  # csrc/
    headers = sorted(glob.glob(os.path.join(root, "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join(root, "**", "*.cuh"), recursive=True))
    # The source folder's path too: ninja's build file names sources by absolute path, so two checkouts
    # sharing one folder would rebuild each other's library on every import.
    digest.update(root.encode())
    for path in list(sources) + headers:
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    tag = f"torch{torch.__version__.replace('+', '_')}-{'cuda' if with_cuda else 'cpu'}-{digest.hexdigest()[:16]}"
    return os.path.join(cache_root(), tag)


def cache_root() -> str:
    """The package's cache folder (JIT builds, the backends' self-check verdicts): ``RESNET_FAST_CACHE``,
    default ``~/.cache/resnet_fast``."""
    return os.environ.get("RESNET_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "resnet_fast"))


def _jit_build() -> str:
    root = _source_root()
    if root is None:
        raise RuntimeError("the C++ sources are not shipped with this installation")
    # At run time the CUDA kernels are worth compiling only where they can run.
    with_cuda, _ = _build_config.cuda_build_status()
    with_cuda = with_cuda and torch.cuda.is_available()
    _build_config.prepare_cuda_environment()
    # Importing cpp_extension on a machine without a GPU logs "No CUDA runtime is found": true,
    # and irrelevant to a CPU-only build, and it would be the user's first line of output.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cpp_logger.setLevel(level)

    sources, kwargs, with_cuda, _ = _build_config.extension_sources(root, with_cuda)
    build_dir = _cache_dir(sources, with_cuda)
    os.makedirs(build_dir, exist_ok=True)
    name = "resnet_fast_jit"
    library = os.path.join(build_dir, f"{name}.so")
    if not os.path.exists(library):
        print(f"resnet_fast: compiling the C++{'/CUDA' if with_cuda else ''} kernels for torch "
              f"{torch.__version__} into {build_dir} (once)...", file=sys.stderr, flush=True)
    cflags = kwargs["extra_compile_args"]["cxx"] + [f"-D{k}={v}" for k, v in kwargs.get("define_macros", [])]
    cuda_flags = kwargs["extra_compile_args"].get("nvcc", []) + [f"-D{k}={v}" for k, v in kwargs.get("define_macros", [])]
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=kwargs["extra_link_args"],
        build_directory=build_dir,
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )
    return library


def load() -> bool:
    """Load the kernels once; True when the compiled library is in use."""
    if status["how"] is not None:
        return status["loaded"]
    aot_error = None
    try:
        from . import _C  # noqa: F401

        status.update(loaded=True, how="ahead-of-time build", path=_C.__file__)
        return _loaded()
    except ImportError as error:  # absent, or built against another torch
        aot_error = error
    jit_enabled = os.environ.get("RESNET_FAST_JIT", "1") != "0"
    aot_present = any(f.startswith("_C.") for f in os.listdir(os.path.dirname(os.path.abspath(__file__))))
    if aot_present:  # present but unloadable: say so once, with the cause
        warnings.warn(f"resnet_fast: the compiled extension does not load under torch {torch.__version__} "
                      f"(built for another torch?): {aot_error}; "
                      + ("rebuilding it against this torch" if jit_enabled else
                         "RESNET_FAST_JIT=0, so the Triton/reference backends are used"))
    if not jit_enabled:
        status.update(how="none", error=(f"ahead-of-time build does not load ({aot_error})" if aot_present else
                                          "no ahead-of-time build") + " and RESNET_FAST_JIT=0")
        return False
    try:
        status.update(loaded=True, how="JIT build at first use", path=_jit_build())
        return _loaded()
    except Exception as error:  # no compiler, no ninja, a compile error: degrade, say why once
        status.update(loaded=False, how="none", error=f"{type(error).__name__}: {error}")
        warnings.warn(f"resnet_fast: C++ kernels unavailable ({status['error']}); "
                      "using the Triton/reference backends")
        return False


def _loaded() -> bool:
    status["cuda_kernels"] = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"resnet_fast::{op}", "CUDA")
                                 for op in OPS)
    return True


def cpu_kernels() -> str | None:
    """The instruction set of the C++ CPU kernels in use ("avx2" or "generic"; None without the
    compiled library). csrc/cpu/common.cpp decides as torch does for its own kernels: the AVX2
    build (x86-64 GCC builds have one) where torch's CPU capability is AVX2 or AVX512, which
    ATEN_CPU_CAPABILITY can lower, else the generic one."""
    if not load():
        return None
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "avx2" if x86 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "generic"


def has_cuda_kernels() -> bool:
    """Whether the compiled library brought CUDA kernels for every primitive."""
    return load() and status["cuda_kernels"]
