"""SE-ResNet/ResNeXt against timm's seresnet*/seresnext*, pre-activation ResNet against timm's resnetv2_*."""
from __future__ import annotations

import pytest
import timm
import timm.models.resnet as timm_resnet
import timm.models.resnetv2 as timm_resnetv2
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, create_conv2d

import resnet_fast
from model_utils import (FORMAT_IDS, FORMATS, build_pair, calibrate_, compare_models,  # noqa: F401
                         make_input, reference_backend)
from resnet_fast.models import ResNet, ResNetV2, SEModule, blocks

SE_BUILDERS = {"se_resnet18": "seresnet18", "se_resnet34": "seresnet34", "se_resnet50": "seresnet50",
               "se_resnet101": "seresnet101", "se_resnet152": "seresnet152",
               "se_resnext50_32x4d": "seresnext50_32x4d", "se_resnext101_32x4d": "seresnext101_32x4d"}
PREACT_BUILDERS = {"preact_resnet18": "resnetv2_18", "preact_resnet34": "resnetv2_34",
                   "preact_resnet50": "resnetv2_50", "preact_resnet101": "resnetv2_101",
                   "preact_resnet152": "resnetv2_152"}
TIMM_NAMES = {**SE_BUILDERS, **PREACT_BUILDERS}


def pair(name: str, seed: int = 0, **kwargs):
    """(ours, timm's) with the same random float64 weights and statistics (timm's loads our state dict, strict)."""
    return build_pair(lambda: getattr(resnet_fast, name)(**kwargs),
                      lambda: timm.create_model(TIMM_NAMES[name], pretrained=False, **kwargs), seed)


def tiny_pair(kind: str):
    """One block per stage: SE bottleneck, SE-ResNeXt bottleneck, pre-activation bottleneck."""
    layers = [1, 1, 1, 1]
    if kind == "se-bottleneck":
        return build_pair(lambda: ResNet(blocks.Bottleneck, layers, se_layer=SEModule),
                          lambda: timm_resnet.ResNet(timm_resnet.Bottleneck, layers, block_args=dict(attn_layer="se")))
    if kind == "se-resnext":
        return build_pair(lambda: ResNet(blocks.Bottleneck, layers, groups=8, width_per_group=4, se_layer=SEModule),
                          lambda: timm_resnet.ResNet(timm_resnet.Bottleneck, layers, cardinality=8, base_width=4,
                                                     block_args=dict(attn_layer="se")))
    assert kind == "preact-bottleneck"
    return build_pair(lambda: ResNetV2(layers),
                      lambda: timm_resnetv2.ResNetV2(layers, conv_layer=create_conv2d, norm_layer=BatchNormAct2d))


def test_se_resnet50_parameter_count():
    with torch.device("meta"):
        model = resnet_fast.se_resnet50()
    assert sum(p.numel() for p in model.parameters()) == 28_088_024


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_state_dict_keys_and_shapes_are_timm(name):
    with torch.device("meta"):
        ours = getattr(resnet_fast, name)().state_dict()
        ref = timm.create_model(TIMM_NAMES[name], pretrained=False).state_dict()
    assert sorted(ours) == sorted(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


@pytest.mark.parametrize("name,kwargs,timm_kwargs", [
    ("se_resnet50", dict(zero_init_residual=True), {}),  # timm zero-inits the last BN by default
    ("preact_resnet18", {}, {}),
    ("preact_resnet50", dict(zero_init_residual=True), dict(zero_init_last=True)),
])
def test_seeded_init_is_timm(name, kwargs, timm_kwargs):
    torch.manual_seed(7)
    ours = getattr(resnet_fast, name)(**kwargs)
    torch.manual_seed(7)
    ref = timm.create_model(TIMM_NAMES[name], pretrained=False, **timm_kwargs)
    ref_state = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["se_resnet18", "se-bottleneck", "se-resnext", "preact_resnet18",
                                  "preact-bottleneck"])
def test_matches_timm(name, train, memory_format):
    ours, ref = pair(name) if name in TIMM_NAMES else tiny_pair(name)
    compare_models(ours, ref, make_input(), train=train, memory_format=memory_format)


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_builders_match_timm_eval(name):
    ours, ref = pair(name)
    x = make_input((2, 3, 64, 64))
    calibrate_(ours, ref, x)
    compare_models(ours, ref, x, train=False, backward=False, memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["se_resnet50", "preact_resnet50",
                                  pytest.param("se_resnext50_32x4d", marks=pytest.mark.slow),
                                  pytest.param("preact_resnet34", marks=pytest.mark.slow)])
def test_builders_match_timm_train(name):
    ours, ref = pair(name)
    compare_models(ours, ref, make_input(), train=True)


def test_forward_features_and_headless(monkeypatch):
    ours, ref = pair("preact_resnet18")
    ours.eval()
    ref.eval()
    x = make_input()
    features = ours.forward_features(x)
    torch.testing.assert_close(features, ref.forward_features(x), rtol=1e-10, atol=1e-12)
    headless = resnet_fast.preact_resnet18(num_classes=0).double().eval()
    headless.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("head.fc.")})
    torch.testing.assert_close(headless(x), features.mean((2, 3)))

    def refuse(*args, **kwargs):
        raise AssertionError("F.batch_norm called: a BN module ran its own forward")

    monkeypatch.setattr(F, "batch_norm", refuse)  # the pre-activation path runs on the fused ops only
    ours.train()(x).sum().backward()


@pytest.mark.parametrize("name", ["se_resnet18", "preact_resnet18"])
def test_batch_of_one_in_training_is_refused_before_any_update(name):
    ours, ref = pair(name)
    x = make_input((1, 3, 32, 32))
    with pytest.raises(ValueError) as ref_error:
        ref.train()(x)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError) as our_error:
        ours.train()(x)
    assert str(our_error.value) == str(ref_error.value)
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


def test_preact_zero_init_residual_zeroes_last_conv():
    model = resnet_fast.preact_resnet18(zero_init_residual=True)
    assert all(not b.conv2.weight.any() for b in model.modules() if isinstance(b, blocks.PreActBasic))


def test_se_reduction_rounding():
    """timm's rounding: channels / 16 to a multiple of 8, at least 8."""
    assert SEModule(64).fc1.out_channels == 8
    assert SEModule(256).fc1.out_channels == 16
    assert SEModule(2048).fc1.out_channels == 128
