"""resnet_fast.convert on timm's ResNet family: outputs, every gradient and the running statistics equal timm's.

float64 and the tolerance of ``model_utils`` (1e-10, why there); 2x3x64x64 inputs: the last
stage's feature map is 2x2, 8 values per BatchNorm channel in training (see model_utils).
Each converted block's eager fallback is made to raise, so a passing comparison means the
fused forward computed it.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import resnet_fast
from model_utils import compare_models, make_input, randomize_, reference_backend  # noqa: F401
from resnet_fast.models import _timm, blocks

MODELS = ["resnet50", "resnet50d", "seresnet50", "seresnext50_32x4d", "resnetv2_50"]
FUSED_CLASSES = (_timm.TimmBasicBlock, _timm.TimmBottleneck, _timm.TimmPreActBasic, _timm.TimmPreActBottleneck)


def timm_model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(timm.create_model(name, pretrained=False, **kwargs))


def x64(seed: int = 1) -> torch.Tensor:
    return make_input((2, 3, 64, 64), seed=seed)


@pytest.fixture
def fused_path_only(monkeypatch):
    """Converted blocks may not fall back to their eager forward."""
    def refuse(self, x):
        raise AssertionError(f"{type(self).__name__} ran its eager forward")
    for cls in FUSED_CLASSES:
        monkeypatch.setattr(cls, "forward_eager", refuse)


def n_timm_blocks(model: nn.Module) -> int:
    return sum(_timm.is_timm_block(m) for m in model.modules())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", MODELS)
def test_copy_matches_timm(name, train, fused_path_only):
    ref = timm_model(name)
    keys = list(ref.state_dict())
    fused = resnet_fast.convert(ref)
    assert fused is not ref and n_timm_blocks(fused) == 0
    assert all(type(m).__module__.startswith("timm.") for m in ref.modules() if _timm.is_timm_block(m))
    assert list(fused.state_dict()) == keys
    compare_models(fused, ref, x64(), train=train)


def test_se_modules_become_the_fused_se():
    fused = resnet_fast.convert(timm_model("seresnet50"))
    assert all(type(b.se) is blocks.SEModule for b in fused.modules() if isinstance(b, _timm.TimmBottleneck))


def test_inplace_keeps_parameters_buffers_and_flags(fused_path_only):
    ref = timm_model("resnetv2_50")
    twin = copy.deepcopy(ref)
    params, buffers = list(ref.parameters()), list(ref.buffers())
    for model in (ref, twin):
        model.stages[1].eval()
        model.stages[0].blocks[0].norm1.requires_grad_(False)
    fused = resnet_fast.convert(ref, inplace=True)
    assert fused is ref and n_timm_blocks(fused) == 0
    assert all(a is b for a, b in zip(fused.parameters(), params))
    assert all(a is b for a, b in zip(fused.buffers(), buffers))
    assert not fused.stages[1].blocks[0].training and fused.stages[0].training
    compare_models(fused, twin, x64(), train=None)


def test_trained_then_converted(fused_path_only):
    """Weights and running statistics moved by a few eager SGD steps, then converted."""
    torch.manual_seed(0)
    ref = timm_model("seresnet50", num_classes=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)  # 0.05 diverges (loss 3 -> 21)
    for step in range(2):
        loss = nn.functional.cross_entropy(ref(x64(seed=10 + step)), torch.tensor([1, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fused = resnet_fast.convert(ref)
    compare_models(fused, ref, x64(seed=20), train=True)
    compare_models(fused, ref, x64(seed=21), train=False)


def test_unsupported_blocks_stay_timm_with_one_warning():
    ref = timm_model("resnet18", aa_layer=nn.AvgPool2d, drop_path_rate=0.1)
    with pytest.warns(UserWarning, match="timm blocks stay on timm's code") as record:
        fused = resnet_fast.convert(ref)
    assert len(record) == 1
    message = str(record[0].message)
    assert "anti-aliased downsampling" in message and "drop-path" in message and "layer2.0" in message
    kept = [n for n, m in fused.named_modules() if _timm.is_timm_block(m)]
    assert "layer1.0" not in kept  # timm's drop-path rate of the first block is 0: converted
    assert kept and all(n in message for n in kept)
    compare_models(fused, ref, x64(), train=False)


def test_other_attention_stays_timm():
    ref = timm_model("ecaresnet26t")
    with pytest.warns(UserWarning, match="attention EcaModule"):
        fused = resnet_fast.convert(ref)
    assert n_timm_blocks(fused) == n_timm_blocks(ref)


def test_strict_raises_before_changing_anything():
    ref = timm_model("resnet18", aa_layer=nn.AvgPool2d)
    with pytest.raises(ValueError, match="anti-aliased downsampling.*strict=True"):
        resnet_fast.convert(ref, inplace=True, strict=True)
    assert n_timm_blocks(ref) == 8


def test_converted_model_pickles(tmp_path):
    fused = resnet_fast.convert(timm_model("resnet18")).eval()
    x = x64()
    with torch.no_grad():
        expected = fused(x)
    torch.save(fused, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
