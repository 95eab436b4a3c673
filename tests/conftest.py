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
