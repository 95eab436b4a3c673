"""The torchvision-compatible builders: keys, seeded init, outputs/gradients/statistics, API, bad input."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.models.resnet as tv_resnet
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import resnet_fast
from model_utils import (FORMAT_IDS, FORMATS, assert_close, assert_state_equal, build_pair,  # noqa: F401
                         calibrate_, compare_models, copy_model, make_input, randomize_, reference_backend,
                         state_snapshot)
from op_testing import saved_bytes
from resnet_fast.models import blocks

TORCHVISION_BUILDERS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                        "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def tiny_pair(block: str = "Bottleneck", layers=(1, 1, 1, 1), seed: int = 0, **kwargs):
    """(ours, torchvision's) ResNet with one block per stage: every code path of the deep models, cheaply."""
    return build_pair(lambda: resnet_fast.models.ResNet(getattr(blocks, block), list(layers), **kwargs),
                      lambda: tv_resnet.ResNet(getattr(tv_resnet, block), list(layers), **kwargs), seed)


def pair(name: str, seed: int = 0, **kwargs):
    """(ours, torchvision's) with the same random float64 weights and statistics."""
    return build_pair(lambda: getattr(resnet_fast, name)(**kwargs),
                      lambda: getattr(torchvision.models, name)(**kwargs), seed)


@pytest.mark.parametrize("name", TORCHVISION_BUILDERS)
def test_state_dict_keys_and_shapes_are_torchvision(name):
    with torch.device("meta"):
        ours = getattr(resnet_fast, name)().state_dict()
        ref = getattr(torchvision.models, name)().state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet18", {}),
    ("resnet50", {"zero_init_residual": True}),
    ("resnext50_32x4d", {"num_classes": 10}),
])
def test_seeded_init_is_torchvision(name, kwargs):
    torch.manual_seed(123)
    ours = getattr(resnet_fast, name)(**kwargs)
    torch.manual_seed(123)
    ref = getattr(torchvision.models, name)(**kwargs)
    ref_state = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    if kwargs.get("zero_init_residual"):
        assert all(not b.bn3.weight.any() for b in ours.modules() if isinstance(b, blocks.Bottleneck))


# Full matrix (train/eval x memory format: outputs, all gradients, statistics) on both block types,
# plus grouped (ResNeXt) and wide bottlenecks in one-block-per-stage ResNets.
@pytest.mark.parametrize("memory_format", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["resnet18", "tiny-bottleneck", "tiny-resnext", "tiny-wide",
                                  "tiny-bottleneck-low-memory", "tiny-resnext-low-memory"])
def test_matches_torchvision(name, train, memory_format):
    if name == "resnet18":
        ours, ref = pair(name)
    else:
        kwargs = {"tiny-bottleneck": {}, "tiny-resnext": dict(groups=8, width_per_group=4),
                  "tiny-wide": dict(width_per_group=128)}[name.removesuffix("-low-memory")]
        ours, ref = tiny_pair(**kwargs)
    ours.set_low_memory(name.endswith("-low-memory"))
    compare_models(ours, ref, make_input(), train=train, memory_format=memory_format)


def test_low_memory_resnet50_matches_torchvision():
    """low_memory reruns convolutions in backward: the train step (outputs, every gradient, running
    statistics) is torchvision's, also with the last BN of each block at zero (zero_init_residual),
    where recovering conv3's output from the block output (In-Place ABN's inversion) would fail."""
    ours, ref = pair("resnet50")
    ours.set_low_memory()
    compare_models(ours, ref, make_input(), train=True)
    with torch.no_grad():
        for model in (ours, ref):
            for block in model.modules():
                if isinstance(block, (blocks.Bottleneck, tv_resnet.Bottleneck)):
                    block.bn3.weight.zero_()
    compare_models(ours, ref, make_input(), train=True)


# Every builder at full depth: an eval forward (fast), and a train step (outputs, every gradient,
# running statistics) for the smaller ones; the deepest train steps are marked slow.
@pytest.mark.parametrize("name", TORCHVISION_BUILDERS)
def test_builders_match_torchvision_eval(name):
    ours, ref = pair(name)
    x = make_input((2, 3, 64, 64))
    calibrate_(ours, ref, x)
    compare_models(ours, ref, x, train=False, backward=False, memory_format=torch.channels_last)


@pytest.mark.parametrize("name", [
    "resnet50",
    pytest.param("resnet34", marks=pytest.mark.slow),
    pytest.param("resnet101", marks=pytest.mark.slow),
    pytest.param("resnet152", marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", marks=pytest.mark.slow),
    pytest.param("resnext101_32x8d", marks=pytest.mark.slow),
    pytest.param("resnext101_64x4d", marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", marks=pytest.mark.slow),
    pytest.param("wide_resnet101_2", marks=pytest.mark.slow),
])
def test_builders_match_torchvision_train(name):
    ours, ref = pair(name)
    compare_models(ours, ref, make_input(), train=True)


def test_two_train_steps_and_momentum_none():
    """num_batches_tracked and the cumulative average (momentum=None) over two steps."""
    ours, ref = pair("resnet18")
    for model in (ours, ref):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
    compare_models(ours, ref, make_input(seed=3), train=True)
    compare_models(ours, ref, make_input(seed=4), train=True)
    assert int(ours.bn1.num_batches_tracked) == 2


def test_dilation_and_num_classes():
    kwargs = dict(replace_stride_with_dilation=[False, True, True], num_classes=7)
    ours, ref = tiny_pair(layers=(1, 1, 2, 2), **kwargs)
    out = compare_models(ours, ref, make_input(), train=True)
    assert out.shape == (2, 7)


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
@pytest.mark.parametrize("bn_kwargs", [dict(affine=False), dict(track_running_stats=False),
                                       dict(momentum=0.3, eps=1e-3)], ids=["no-affine", "untracked", "momentum-eps"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_blocks_with_batchnorm_options(block, bn_kwargs, train):
    norm = functools.partial(nn.BatchNorm2d, **bn_kwargs)
    planes, expansion = 8, getattr(blocks, block).expansion
    downsample = lambda: nn.Sequential(nn.Conv2d(16, planes * expansion, 1, stride=2, bias=False),  # noqa: E731
                                       norm(planes * expansion))
    torch.manual_seed(0)
    ours = randomize_(getattr(blocks, block)(16, planes, 2, downsample(), norm_layer=norm))
    ref = copy_model(ours, getattr(torchvision.models.resnet, block)(16, planes, 2, downsample(), norm_layer=norm))
    compare_models(ours, ref, make_input((3, 16, 8, 8)), train=train)


def test_downsample_bn_with_its_own_momentum():
    """A downsample BN configured unlike bn3 cannot share the tail op's config: it runs as its own conv_bn."""
    ours, ref = tiny_pair()
    for model in (ours, ref):
        model.layer2[0].downsample[1].momentum = 0.5
        model.layer3[0].downsample[1].eps = 1e-3
    compare_models(ours, ref, make_input(), train=True)


def test_frozen_batchnorm_requires_grad_false():
    """Detection-style frozen BN: no BN parameter gradients, the rest as torchvision's (train and eval BN)."""
    ours, ref = tiny_pair()
    for model in (ours, ref):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.requires_grad_(False)
    compare_models(ours, ref, make_input(), train=True)
    assert ours.bn1.weight.grad is None and ours.conv1.weight.grad is not None
    compare_models(ours, ref, make_input(), train=False)


def test_torchvision_frozen_batchnorm2d_layers():
    ours, ref = tiny_pair(norm_layer=FrozenBatchNorm2d)
    compare_models(ours, ref, make_input(), train=True)


def test_sync_batchnorm_single_process():
    """convert_sync_batchnorm keeps the model working; without a process group SyncBN is BN."""
    ours, ref = pair("resnet18")
    ours = nn.SyncBatchNorm.convert_sync_batchnorm(ours)
    ref = nn.SyncBatchNorm.convert_sync_batchnorm(ref)
    assert isinstance(ours.layer1[0].bn1, nn.SyncBatchNorm)
    compare_models(ours, ref, make_input(), train=True)
    compare_models(ours, ref, make_input(), train=False)


def test_no_batchnorm_forward_on_the_hot_path(monkeypatch):
    ours, ref = tiny_pair()
    x = make_input()
    expected = ref(x)

    def refuse(*args, **kwargs):
        raise AssertionError("F.batch_norm called: a BN module ran its own forward")

    monkeypatch.setattr(F, "batch_norm", refuse)
    out = ours(x)
    out.sum().backward()
    ours.eval()(x)
    assert_close(out, expected, "output")


def test_hooks_fall_back_to_eager():
    """A hook on a BN module must fire: that block runs module by module, with the same result."""
    ours, ref = pair("resnet18")
    seen = []
    ours.layer2[0].bn1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    compare_models(ours, ref, make_input(), train=True)
    assert seen == [torch.Size([2, 128, 6, 6])]


def test_swapped_activation_falls_back_to_eager():
    ours, ref = tiny_pair(num_classes=3)
    for model in (ours, ref):
        model.relu = nn.SiLU()
        for block in (model.layer1[0], model.layer3[0]):
            block.relu = nn.SiLU()
    compare_models(ours, ref, make_input(), train=True)


def test_block_plan_is_made_once_per_module_state(monkeypatch):
    """A block decides what it fuses once (models/_fusion.plan_of), not per forward, and decides
    again after a change made after its first forward: a swapped activation, a hook, a padding."""
    ours, ref = tiny_pair(num_classes=3)
    x = make_input()
    calls = []
    real = blocks.se_weights
    monkeypatch.setattr(blocks, "se_weights", lambda se: calls.append(se) or real(se))
    compare_models(ours, ref, x, train=True)
    made = len(calls)
    assert made == sum(isinstance(m, blocks._ResidualBlock) for m in ours.modules())
    compare_models(ours, ref, x, train=True)
    assert len(calls) == made  # same state: no new decision

    for model in (ours, ref):  # changed after the first forward: eager with the new activation
        model.layer1[0].relu = nn.SiLU()
    compare_models(ours, ref, x, train=True)
    assert len(calls) > made

    seen = []
    ours.layer2[0].bn2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    compare_models(ours, ref, x, train=True)
    assert seen == [torch.Size([2, 128, 6, 6])]  # the hook added after the first forward fired

    block = ours.layer3[0]
    before = block.__dict__["_fusion_plan"][1]
    for model in (ours, ref):
        model.layer3[0].conv2.padding_mode = "reflect"
    compare_models(ours, ref, x, train=True)
    assert block.__dict__["_fusion_plan"][1] is None  # a reflect-padded conv runs the block eagerly
    assert before is not None


def test_other_norm_layer_falls_back_to_eager():
    norm = functools.partial(nn.GroupNorm, 4)
    torch.manual_seed(0)
    ours = resnet_fast.resnet18(norm_layer=norm, num_classes=5).double()
    ref = copy_model(ours, torchvision.models.resnet18(norm_layer=norm, num_classes=5))
    compare_models(ours, ref, make_input(), train=True)


def test_num_classes_zero_and_forward_features():
    ours, ref = pair("resnet18")
    ours.eval()
    backbone = resnet_fast.resnet18(num_classes=0).double().eval()
    backbone.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("fc.")})
    x = make_input()
    features = backbone.forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    pooled = backbone(x)
    assert pooled.shape == (2, 512)
    torch.testing.assert_close(pooled, features.mean((2, 3)))
    torch.testing.assert_close(ours.fc(pooled), ours(x))
    assert_close(ours.fc(pooled), ref.eval()(x), "logits")


def test_registry():
    names = resnet_fast.list_models()
    assert len(names) == 22 and set(TORCHVISION_BUILDERS) <= set(names)
    model = resnet_fast.get_model("resnet18", num_classes=10)
    assert isinstance(model, resnet_fast.models.ResNet) and model.fc.out_features == 10
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        resnet_fast.get_model("resnet19")


def test_builder_fixes_groups():
    with pytest.raises(ValueError, match="groups"):
        resnet_fast.resnext50_32x4d(groups=2)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bad_input_leaves_state_unchanged(train):
    model = resnet_fast.resnet18().double().train(train)
    before = state_snapshot(model)
    with pytest.raises(ValueError, match=r"4-D input of shape \(N, 3, H, W\).*3-D"):
        model(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*got shape \(2, 4, 32, 32\)"):
        model(torch.randn(2, 4, 32, 32, dtype=torch.float64))
    with pytest.raises(RuntimeError):  # dtype mismatch: raised by the stem conv, before any statistic
        model(torch.randn(2, 3, 32, 32, dtype=torch.float32))
    model.conv1.padding = (0, 0)  # a 5x5 input then leaves the stem with an empty map
    with pytest.raises(ValueError, match="input of spatial size 5x5 is too small: a feature map would be 0x0"):
        model(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    assert_state_equal(model, before)


def test_batch_of_one_in_training_is_refused_before_any_update():
    """Same error as torchvision (raised by its layer4 BN, after the others updated); ours changes nothing."""
    ours, ref = pair("resnet18")
    x = make_input((1, 3, 32, 32))
    with pytest.raises(ValueError) as ref_error:
        ref.train()(x)
    ours.train()(make_input((2, 3, 32, 32)))  # a batch of two at this size first (the sizes get cached)
    before = state_snapshot(ours)
    with pytest.raises(ValueError) as our_error:
        ours.train()(x)
    assert str(our_error.value) == str(ref_error.value)
    assert str(our_error.value) == ("Expected more than 1 value per channel when training, "
                                    "got input size torch.Size([1, 512, 1, 1])")
    assert_state_equal(ours, before)
    # In eval mode a batch of one is fine; with 64x64 input the last map is 2x2, fine in training too.
    ours.eval()(x)
    ours.train()(make_input((1, 3, 64, 64)))


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the unique activation storages (4-D tensors) autograd keeps for backward, parameters and
    buffers excluded. Left out on both sides: per-channel and per-(n, c) vectors (eager's saved mean and
    invstd; the fused ops' statistics and (N, C) coefficient tables, whose bytes are 8 per (n, c) against
    an activation's H*W*dtype bytes: with them resnet50 keeps 0.845 of torchvision's bytes at 224x224)."""
    return saved_bytes(lambda: model(x), exclude=(*model.parameters(), *model.buffers()), keep=lambda t: t.dim() == 4)


@pytest.mark.parametrize("name, bound", [("resnet50", 0.86), ("resnet18", 0.87), ("preact_resnet50", 0.63),
                                         ("resnet50-low-memory", 0.56)])
def test_training_keeps_fewer_activations_than_torchvision(name, bound):
    """In training each convolution after a BN-ReLU recomputes its input in backward (bn_relu_conv):
    a block keeps its input and its convolutions' raw outputs only. Measured 0.842 (resnet50), 0.86
    (resnet18) of torchvision's activation bytes, 0.618 (preact_resnet50) of timm's resnetv2_50; in the
    post-activation models what remains is dominated by the block inputs and the last
    convolution's output, which the residual tail needs. With low_memory the last (and
    downsample, stem) convolutions rerun in backward instead: resnet50 0.547."""
    if name.startswith("preact"):
        import timm

        torch.manual_seed(0)
        ours, ref = resnet_fast.get_model(name), timm.create_model("resnetv2_50")
    else:
        ours, ref = pair(name.removesuffix("-low-memory"))
        ours.set_low_memory(name.endswith("-low-memory"))
    ours, ref = (m.float().train().to(memory_format=torch.channels_last) for m in (ours, ref))
    x = make_input((2, 3, 64, 64)).float().contiguous(memory_format=torch.channels_last)
    assert _saved_activation_bytes(ours, x) <= bound * _saved_activation_bytes(ref, x)
