"""The foundation: the package imports with and without its compiled extension, info runs,
the ops are registered, and the CUDA dispatch key has kernels when the build had CUDA."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import resnet_fast
from resnet_fast import _build_config, _extension, ops

FUSED_OPS = ("conv_bn_relu", "bn_add_relu", "squeeze_excite", "bn_relu")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter outside the repo (so the installed package is imported)."""
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, cwd=os.path.dirname(os.path.dirname(resnet_fast.__file__)), timeout=900)


# Makes `import resnet_fast._C` fail as a library built for another torch does.
BLOCK_EXTENSION = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "resnet_fast._C":
            raise ImportError("_C.so: undefined symbol: _ZN3c1010simulated")
sys.meta_path.insert(0, _Block())
"""

TINY_OP = """
import torch, warnings
import resnet_fast
from resnet_fast import ops, _extension, backend
x = torch.randn(2, 3, 4, 4, requires_grad=True)
out = ops.bn_relu(x, None, None, None, None, training=True)
out.sum().backward()
print("status", _extension.status["how"], backend.resolve("bn_stats", x.device), x.grad.shape)
"""


def test_registered_ops_exist():
    """The primitives are registered ops; the fused ops are Functions over them, callable from resnet_fast.ops."""
    for name in _extension.OPS:
        assert hasattr(torch.ops.resnet_fast, name), name
    for name in FUSED_OPS:
        assert callable(getattr(ops, name)) and not hasattr(torch.ops.resnet_fast, name), name


def test_info_runs():
    result = subprocess.run([sys.executable, "-m", "resnet_fast.info"], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(resnet_fast.__file__)))
    assert result.returncode == 0, result.stderr
    for field in ("torch", "triton", "extension", "backends:", "reference"):
        assert field in result.stdout


def test_import_without_extension_falls_back_with_one_warning():
    """An unloadable build never crashes the import: one warning naming the cause, then reference."""
    result = run_python(BLOCK_EXTENSION + TINY_OP, RESNET_FAST_JIT="0", PYTHONWARNINGS="default")
    assert result.returncode == 0, result.stderr
    assert "status none reference" in result.stdout
    if _extension.status["how"] == "ahead-of-time build":  # the warning is about the unloadable build
        assert result.stderr.count("undefined symbol") == 1, result.stderr


@pytest.mark.skipif(_extension.status["how"] != "ahead-of-time build", reason="needs an ahead-of-time build")
def test_unloadable_extension_is_rebuilt_against_the_runtime_torch(tmp_path):
    """What a plain `pip install .` (no torch at build time) or a torch upgrade leads to: JIT at first use."""
    result = run_python(BLOCK_EXTENSION + TINY_OP, RESNET_FAST_CACHE=str(tmp_path), RESNET_FAST_NO_CUDA="1",
                        PYTHONWARNINGS="default")
    assert result.returncode == 0, result.stderr
    assert "status JIT build at first use cpu" in result.stdout, result.stdout + result.stderr
    assert "compiling the C++ kernels" in result.stderr


def test_cuda_kernels_registered_when_built_with_cuda():
    """CI builds with nvcc but no GPU: the CUDA dispatch key must still have every primitive's kernel."""
    buildable, why = _build_config.cuda_build_status()
    if not buildable or _extension.status["how"] != "ahead-of-time build":
        pytest.skip(f"no ahead-of-time CUDA build here ({why or _extension.status['how']})")
    # Read when the library loaded, before resnet_fast.ops filled missing keys with the reference.
    assert _extension.status["cuda_kernels"], "built with nvcc available, yet the library has no CUDA kernels"
    for op in _extension.OPS:
        dump = torch._C._dispatch_dump(f"resnet_fast::{op}")
        cuda_line = next((line for line in dump.splitlines() if line.startswith("CUDA")), "")
        assert "csrc/cuda/" in cuda_line, f"{op}: CUDA kernel not from csrc/cuda: {cuda_line!r}"


def test_cuda_build_is_gated_on_toolkit_not_gpu(monkeypatch):
    monkeypatch.setenv("RESNET_FAST_NO_CUDA", "1")
    assert _build_config.cuda_build_status() == (False, "RESNET_FAST_NO_CUDA is set")
    monkeypatch.delenv("RESNET_FAST_NO_CUDA")
    monkeypatch.setenv("CUDA_HOME", "/nonexistent")
    home = _build_config.find_cuda_home()
    assert home is None or os.path.exists(os.path.join(home, "bin", "nvcc"))


def test_backend_selection_errors_are_clear():
    with pytest.raises(ValueError, match="unknown backend"):
        resnet_fast.set_backend("fastest")
    previous = resnet_fast.get_backend()
    try:
        resnet_fast.set_backend("cuda")
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            resnet_fast.ops.bn_relu(torch.randn(2, 3, 2, 2), None, None, None, None, training=True)
    finally:
        resnet_fast.set_backend(previous)


def test_jit_cache_is_per_source_folder(tmp_path):
    """Two checkouts with the same sources get two JIT cache folders (ninja's build file holds absolute
    paths: one shared folder would make each rebuild the other's library)."""
    import shutil

    root = _extension._source_root()
    if root is None:
        pytest.skip("the C++ sources are not shipped with this installation")
    copy = tmp_path / "csrc"
    shutil.copytree(root, copy)
    sources = ["ops.cpp"]
    first = _extension._cache_dir([os.path.join(root, s) for s in sources], False)
    second = _extension._cache_dir([os.path.join(str(copy), s) for s in sources], False)
    assert first != second
    assert first == _extension._cache_dir([os.path.join(root, s) for s in sources], False)
