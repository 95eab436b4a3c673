"""Every fused op end to end on the Triton backend (CPU tensors through TRITON_INTERPRET=1 here).

Small shapes only: the interpreter runs each program in Python.
"""
import pytest
import torch

import test_bn_add_relu as bn_add_relu_cases
import test_conv_bn_relu as conv_cases
import test_squeeze_excite as se_cases
from op_testing import FORMATS, compare, selected_backend
from resnet_fast import backend, ops
from resnet_fast.ops import reference

pytestmark = pytest.mark.skipif(not backend.triton_status()[0], reason=backend.triton_status()[1])


@pytest.fixture(autouse=True)
def triton_backend():
    with selected_backend("triton"):
        yield


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_conv_bn_relu(fmt, training):
    master, conv = conv_cases.master_inputs(((2, 3, 5, 4), 6, 3, 1, 1, 1, 1))
    compare(conv_cases.call(ops.conv_bn_relu, conv, training),
            conv_cases.call(reference.conv_bn_relu, conv, training), master, conv_cases.NAMES,
            torch.float32, fmt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_bn_add_relu_with_downsample_bn(fmt, dtype):
    master = bn_add_relu_cases.master_inputs((2, 5, 3, 4), True)
    compare(bn_add_relu_cases.call(ops.bn_add_relu, True, True), bn_add_relu_cases.call(reference.bn_add_relu, True, True),
            master, bn_add_relu_cases.NAMES_ID_BN, dtype, fmt)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_squeeze_excite(fmt):
    master = se_cases.master_inputs((2, 6, 3, 3), True)
    compare(se_cases.call(ops.squeeze_excite, True, True),
            se_cases.call(reference.squeeze_excite, True, True), master, se_cases.NAMES_ID_BN,
            torch.float32, fmt)
