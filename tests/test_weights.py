"""weights= of the builders: checkpoint files the test writes, state dicts, torchvision Weights enums."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

import resnet_fast
from model_utils import assert_close, assert_state_equal, make_input, randomize_, reference_backend  # noqa: F401


@pytest.fixture(scope="module")
def torchvision_resnet18():
    """float32, as the builders make their models: loading is then exact."""
    return randomize_(torchvision.models.resnet18(num_classes=10)).float().eval()


def assert_loaded(model, state):
    assert_state_equal(model, state)


def assert_same_logits(model, ref):
    x = make_input()
    assert_close(model.double().eval()(x), ref.double().eval()(x), "logits")


def test_checkpoint_file(tmp_path, torchvision_resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18.state_dict(), path)
    for weights in (path, str(path)):
        model = resnet_fast.resnet18(weights=weights)
        assert model.fc.out_features == 10  # num_classes from the checkpoint
        assert_loaded(model, torchvision_resnet18.state_dict())
    assert_same_logits(model, copy.deepcopy(torchvision_resnet18))


def test_training_checkpoint_with_ddp_and_compile_prefixes(tmp_path, torchvision_resnet18):
    state = {"module._orig_mod." + k: v for k, v in torchvision_resnet18.state_dict().items()}
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    model = resnet_fast.get_model("resnet18", weights=path, num_classes=10)
    assert_loaded(model, torchvision_resnet18.state_dict())


def test_state_dict_and_headless_backbone(torchvision_resnet18):
    model = resnet_fast.resnet18(weights=torchvision_resnet18.state_dict())
    assert_loaded(model, torchvision_resnet18.state_dict())
    backbone = resnet_fast.resnet18(weights=torchvision_resnet18.state_dict(), num_classes=0)
    assert isinstance(backbone.fc, torch.nn.Identity)
    assert backbone(make_input().float()).shape == (2, 512)


def test_num_classes_mismatch(torchvision_resnet18):
    with pytest.raises(ValueError, match="num_classes=5, but the weights' classifier fc.weight has 10 classes"):
        resnet_fast.resnet18(weights=torchvision_resnet18.state_dict(), num_classes=5)


def test_wrong_architecture_is_refused(torchvision_resnet18):
    with pytest.raises(RuntimeError, match="Missing key"):
        resnet_fast.resnet50(weights=torchvision_resnet18.state_dict())


def test_torchvision_weights_enum(monkeypatch):
    """The enum path, with torchvision's download replaced by a local state dict."""
    state = resnet_fast.resnet18().state_dict()
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):
        requested.append((self, kwargs))
        return state

    enum = torchvision.models.ResNet18_Weights
    monkeypatch.setattr(enum, "get_state_dict", fake_get_state_dict)
    for weights in (enum.IMAGENET1K_V1, "IMAGENET1K_V1", "DEFAULT"):
        model = resnet_fast.resnet18(weights=weights, progress=False)
        assert model.fc.out_features == 1000
        assert_loaded(model, state)
    assert all(w is enum.IMAGENET1K_V1 and kw["progress"] is False for w, kw in requested)
    with pytest.raises(ValueError, match="expected ResNet50_Weights"):
        resnet_fast.resnet50(weights=enum.IMAGENET1K_V1)


def test_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a member"):
        resnet_fast.resnet18(weights="no/such/file.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        resnet_fast.se_resnet18(weights="no/such/file.pth")
    with pytest.raises(TypeError, match="expected a checkpoint path"):
        resnet_fast.resnet18(weights=3)
    path = tmp_path / "not_a_state_dict.pt"
    torch.save({"epoch": 1}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        resnet_fast.resnet18(weights=path)


@pytest.mark.parametrize("name,timm_name", [("se_resnet18", "seresnet18"), ("preact_resnet18", "resnetv2_18")])
def test_timm_checkpoint(tmp_path, name, timm_name):
    ref = randomize_(timm.create_model(timm_name, pretrained=False, num_classes=7)).float()
    path = tmp_path / f"{timm_name}.pth"
    torch.save(ref.state_dict(), path)
    model = getattr(resnet_fast, name)(weights=path)
    assert_loaded(model, ref.state_dict())
    assert_same_logits(model, ref)
