import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present; it must be
# set before triton is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import resnet_fast  # noqa: E402
from resnet_fast import backend  # noqa: E402
from op_testing import selected_backend  # noqa: E402


def cpu_backends():
    """Backends that run CPU tensors here (Triton's interpreter is exercised in its own tests: slow)."""
    names = ["reference"]
    if backend.backend_status()["cpu"][0] and torch._C._dispatch_has_kernel_for_dispatch_key(
            "resnet_fast::bn_stats", "CPU"):
        names.append("cpu")
    return names


@pytest.fixture(params=cpu_backends())
def op_backend(request):
    """Run the test once per backend usable for CPU tensors, restoring the selection after."""
    with selected_backend(request.param) as name:
        yield name


# Test files that run the Triton kernels through the interpreter when there is no GPU.
INTERPRETER_TEST_FILES = {"test_triton_primitives.py", "test_triton_ops.py", "test_fused_conv_block.py"}


def pytest_collection_modifyitems(config, items):
    """Skip the interpreter tests, with the reason, where the installed Triton and numpy cannot run them."""
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return
    from _triton_compat import installed_problem

    problem = installed_problem()
    if problem is None:
        return
    for item in items:
        if os.path.basename(str(item.fspath)) in INTERPRETER_TEST_FILES:
            item.add_marker(pytest.mark.skip(reason=problem))
