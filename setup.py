"""Build of resnet_fast.

With torch importable (``pip install --no-build-isolation .``) the extension
``resnet_fast._C`` is compiled ahead of time with ninja: the C++ CPU kernels always,
the CUDA kernels whenever torch has CUDA and nvcc is found, GPU or not. Without torch
(plain ``pip install .`` under build isolation) the wheel is pure Python and carries
the C++/CUDA sources, which ``resnet_fast._extension`` compiles at first use.

Environment: RESNET_FAST_NO_CUDA=1 skips the CUDA kernels; MAX_JOBS caps ninja;
TORCH_CUDA_ARCH_LIST picks GPU archs (default "8.0;9.0" when no GPU is visible);
CUDA_HOME picks the toolkit (default /usr/local/cuda when it has nvcc).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package as resnet_fast/_csrc for the first-use JIT build."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "resnet_fast", "_csrc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), target)


def extension_modules():
    try:
        import torch  # noqa: F401
    except ImportError:
        print("resnet_fast: torch is not importable at build time; building a pure-Python "
              "wheel (the extension compiles at first use against the runtime torch)")
        return [], {}
    # Imported only here: resnet_fast/__init__ imports torch, and this file must run without it.
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_build_config", os.path.join(HERE, "resnet_fast", "_build_config.py"))
    build_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_config)
    build_config.prepare_cuda_environment()  # must precede torch.utils.cpp_extension's import
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources, kwargs, with_cuda, why = build_config.extension_sources(HERE)
    print(f"resnet_fast: building the extension {'with' if with_cuda else 'without'} CUDA kernels"
          + ("" if with_cuda else f" ({why})"))
    extension_class = CUDAExtension if with_cuda else CppExtension
    ext = extension_class("resnet_fast._C", [os.path.relpath(s, HERE) for s in sources], **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
