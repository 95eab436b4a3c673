"""Inference on the C++ CPU backend in float32: every convolution followed by a BN (and the block
tails' add) runs as one oneDNN convolution with post-ops (``resnet_fast/ops/_folded_conv.py``).

The model tests run in float64 on the reference backend, where this path is never taken;
here it is compared with the torchvision/timm model in float32. Tolerance: folding BN
into the weights rounds w * a to float32 and oneDNN accumulates in its own order, so
logits differ from eager's by float32 rounding through ~20 layers; observed relative
errors are 2e-6 to 7e-6 on calibrated statistics, bounded here by 1e-4.
"""
from __future__ import annotations

import pytest
import torch

import resnet_fast
from resnet_fast import _weight_cache, backend
from model_utils import FORMAT_IDS, FORMATS, calibrate_, make_input, rel_err
from resnet_fast.models import _fusion
from resnet_fast.ops import _folded_conv
from test_models import tiny_pair as tiny_torchvision_pair
from test_se_preact import tiny_pair as tiny_timm_pair

pytestmark = pytest.mark.skipif(not (backend.backend_status()["cpu"][0] and torch.backends.mkldnn.is_available()),
                                reason="needs the compiled CPU kernels and oneDNN")

MODELS = {
    "basic": lambda: tiny_torchvision_pair("BasicBlock"),
    "bottleneck": lambda: tiny_torchvision_pair(),
    "resnext": lambda: tiny_torchvision_pair(groups=8, width_per_group=4),
    "preact-bottleneck": lambda: tiny_timm_pair("preact-bottleneck"),
}


@pytest.fixture
def cpu_backend():
    before = resnet_fast.get_backend()
    resnet_fast.set_backend("cpu")
    yield
    resnet_fast.set_backend(before)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN convolutions (folded conv_bn_relu and the pre-activation blocks' conv_add)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[-1] is not None)  # whether it carried a residual
        return onednn_conv(*args, **kwargs)

    onednn_conv = _folded_conv.onednn_conv
    monkeypatch.setattr(_folded_conv, "onednn_conv", counted)
    monkeypatch.setattr(_fusion, "onednn_conv", counted)
    return calls


@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_eager_in_float32(cpu_backend, onednn_calls, name, memory_format):
    ours, ref = MODELS[name]()
    x = make_input((2, 3, 64, 64))
    calibrate_(ours, ref, x)
    ours, ref = (m.float().eval().to(memory_format=memory_format) for m in (ours, ref))
    x = x.float().contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert rel_err(got, expected) < 1e-4
    # Every block's last convolution carries the residual in its epilogue (4 blocks).
    assert sum(onednn_calls) == 4, onednn_calls
    assert len(onednn_calls) >= 9


def test_gradients_or_other_dtypes_take_the_kernels(cpu_backend, onednn_calls):
    """With autograd recording, in float64, or on the reference backend, no oneDNN epilogue."""
    ours, _ = MODELS["bottleneck"]()  # float64
    ours.eval()
    x = make_input((2, 3, 32, 32))
    with torch.no_grad():
        ours(x)  # float64
    ours.float()(x.float().requires_grad_()).sum().backward()  # float32 with gradients
    with torch.no_grad():
        resnet_fast.set_backend("reference")
        ours.float()(x.float())
    assert onednn_calls == []


@pytest.mark.parametrize("name", ["bottleneck", "preact-bottleneck"])
def test_inference_cache_folds_once_and_gives_the_same_numbers(cpu_backend, name):
    """Inside resnet_fast.inference_cache() the folded/prepacked weights are built on the first
    forward and reused: same outputs as without the cache, for other batch sizes and both layouts
    (channels_last gets oneDNN-prepacked weights), and nothing is kept after the scope."""
    ours, _ = MODELS[name]()
    ours.float().eval()
    inputs = [make_input(shape).float() for shape in ((2, 3, 64, 64), (1, 3, 48, 40))]
    inputs += [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    with torch.no_grad():
        expected = [ours(x) for x in inputs]
        with resnet_fast.inference_cache():
            ours(inputs[0])
            entries = _weight_cache.cache_size()
            assert entries >= 9
            got = [ours(x) for x in inputs]
            assert _weight_cache.cache_size() == 2 * entries  # one more per convolution for channels_last
            with resnet_fast.inference_cache():  # a nested scope starts empty
                assert _weight_cache.cache_size() == 0
        assert _weight_cache.cache_size() == 0
    for g, e in zip(got, expected):
        assert rel_err(g, e) < 1e-5


def test_inference_cache_is_not_used_for_training(cpu_backend):
    """With autograd recording (training, or eval with gradients) nothing is folded or cached."""
    ours, _ = MODELS["bottleneck"]()
    ours.float()
    x = make_input((2, 3, 32, 32)).float()
    with resnet_fast.inference_cache():
        ours.train()(x).sum().backward()
        ours.eval()(x).sum().backward()
        assert _weight_cache.cache_size() == 0
