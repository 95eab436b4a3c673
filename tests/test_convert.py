"""resnet_fast.convert: torchvision ResNets onto the fused ops, as a copy or in place."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
import torchvision.models.resnet as tv_resnet
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

import resnet_fast
from model_utils import assert_close, compare_models, make_input, randomize_, reference_backend  # noqa: F401
from resnet_fast.models import blocks

TV_CLASSES = (tv_resnet.ResNet, tv_resnet.BasicBlock, tv_resnet.Bottleneck)


def torchvision_model(name="resnet18", **kwargs):
    return randomize_(getattr(torchvision.models, name)(**kwargs))


def tiny_torchvision(**kwargs):
    return randomize_(tv_resnet.ResNet(tv_resnet.Bottleneck, [1, 1, 1, 1], **kwargs))


def assert_fully_converted(model):
    assert not any(type(m) in TV_CLASSES for m in model.modules())
    assert any(isinstance(m, (blocks.BasicBlock, blocks.Bottleneck)) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                                  "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"])
def test_every_torchvision_builder_converts_with_the_same_keys(name):
    with torch.device("meta"):
        ref = getattr(torchvision.models, name)()
        keys = list(ref.state_dict())
        fused = resnet_fast.convert(ref, inplace=True)
    assert fused is ref and isinstance(fused, resnet_fast.models.ResNet)
    assert_fully_converted(fused)
    assert list(fused.state_dict()) == keys


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["resnet18", "tiny-resnext"])
def test_copy_matches_the_original(kind, train):
    ref = torchvision_model() if kind == "resnet18" else tiny_torchvision(groups=8, width_per_group=4)
    fused = resnet_fast.convert(ref)
    assert fused is not ref and type(ref) is tv_resnet.ResNet  # the original is untouched
    assert_fully_converted(fused)
    compare_models(fused, ref, make_input(), train=train)


def test_inplace_keeps_parameters_hooks_and_flags():
    ref = tiny_torchvision()
    twin = copy.deepcopy(ref)
    ref.layer1[0].bn1.requires_grad_(False)
    twin.layer1[0].bn1.requires_grad_(False)
    ref.layer2.eval()
    twin.layer2.eval()
    params = list(ref.parameters())
    calls = []
    ref.layer3.register_forward_hook(lambda m, i, o: calls.append(1))
    fused = resnet_fast.convert(ref, inplace=True)
    assert fused is ref
    assert all(a is b for a, b in zip(fused.parameters(), params))
    assert not fused.layer2[0].training and fused.layer1[0].training
    assert_fully_converted(fused)
    compare_models(fused, twin, make_input(), train=None)
    assert calls == [1]


def test_trained_model():
    """A model trained (weights and running statistics moved) eagerly, then converted."""
    torch.manual_seed(0)
    ref = tiny_torchvision(num_classes=4)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        loss = nn.functional.cross_entropy(ref(make_input(seed=10 + step)), torch.tensor([1, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fused = resnet_fast.convert(ref)
    compare_models(fused, ref, make_input(seed=20), train=False)
    compare_models(fused, ref, make_input(seed=21), train=True)


def test_backbone_with_frozen_batchnorm():
    """A detection-style backbone (IntermediateLayerGetter, FrozenBatchNorm2d): its blocks are converted."""
    body = IntermediateLayerGetter(tiny_torchvision(norm_layer=FrozenBatchNorm2d),
                                   return_layers={"layer2": "0", "layer4": "1"})
    fused = resnet_fast.convert(body)
    assert_fully_converted(fused)
    x = make_input()
    for model in (fused, body):
        model.train()
    ours, ref = fused(x), body(x)
    for key in ("0", "1"):
        assert_close(ours[key], ref[key], f"feature {key}")


def test_sync_batchnorm_model_converts():
    ref = nn.SyncBatchNorm.convert_sync_batchnorm(tiny_torchvision())
    fused = resnet_fast.convert(ref)
    assert isinstance(fused.layer1[0].bn1, nn.SyncBatchNorm)
    compare_models(fused, ref, make_input(), train=True)


def test_already_fused_and_unsupported_models():
    model = resnet_fast.resnet18()
    assert resnet_fast.convert(model) is model
    with pytest.raises(TypeError, match="contains no torchvision ResNet.*no timm"):
        resnet_fast.convert(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected an nn.Module"):
        resnet_fast.convert("resnet18")
