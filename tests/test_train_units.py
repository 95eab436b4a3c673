"""The training pieces one by one: optimizer groups, schedule, checkpoints, data, model loading."""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from resnet_fast.models import Bottleneck
from resnet_fast import train
from resnet_fast.training import UsageError, checkpoint, data, logs, optim
from resnet_fast.training.models import build_model, for_inference, load_weights


def test_no_weight_decay_on_bn_and_bias():
    model = build_model("resnet18", num_classes=10)
    decay, no_decay = optim.parameter_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert "conv1.weight" in decayed and "fc.weight" in decayed
    assert not any(n.endswith(".bias") or ".bn" in n or "downsample.1" in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warmup_then_cosine():
    factor = lambda step: optim.lr_factor(step, steps_per_epoch=10, epochs=5, warmup_epochs=1, schedule="cosine",
                                          step_size=1, gamma=0.1)
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0) and factor(10) == pytest.approx(1.0)
    assert factor(30) == pytest.approx(0.5)  # half-way through the 40 post-warm-up steps
    assert factor(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_schedule_step():
    factor = lambda step: optim.lr_factor(step, steps_per_epoch=10, epochs=9, warmup_epochs=0, schedule="step",
                                          step_size=3, gamma=0.1)
    assert [factor(s) for s in (0, 29, 30, 59, 60)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_scheduler_steps_the_optimizer_lr():
    model = nn.Linear(2, 2)
    opt = optim.sgd(model, lr=0.4, momentum=0.9, nesterov=True, weight_decay=0.0)
    sched = optim.scheduler(opt, steps_per_epoch=4, epochs=2, warmup_epochs=1, schedule="cosine", step_size=1,
                            gamma=0.1)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[4] == pytest.approx(0.4) and lrs[7] < 0.1
    assert opt.param_groups[0]["nesterov"]


# ----------------------------------------------------------------------------- checkpoints
def test_save_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"a": 1}, str(path))
    checkpoint.save_atomic({"a": 2}, str(path))
    assert torch.load(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_save_atomic_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"a": 1}, str(path))
    with pytest.raises(Exception):
        checkpoint.save_atomic({"a": lambda: 0}, str(path))  # lambdas do not pickle: fails mid-write
    assert torch.load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_rng_state_round_trip():
    state = checkpoint.rng_state(torch.device("cpu"))
    expected = torch.rand(3)
    checkpoint.set_rng_state(state, torch.device("cpu"))
    torch.testing.assert_close(torch.rand(3), expected)


def _real_checkpoint(path, arch="resnet18"):
    model = build_model(arch, num_classes=10)
    state = {"format": checkpoint.FORMAT, "arch": arch, "num_classes": 10, "class_names": [str(i) for i in range(10)],
             "model": model.state_dict(), "rng": [checkpoint.rng_state(torch.device("cpu"))]}
    checkpoint.save_atomic(state, str(path))
    return state


def test_load_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    _real_checkpoint(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        checkpoint.load(str(path))


def test_load_foreign_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_model("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(UsageError, match="not a resnet_fast training checkpoint"):
        checkpoint.load(str(path))


@pytest.mark.parametrize("kind", ["text", "pickled-model"])
def test_load_not_a_checkpoint_says_so_without_torch_advice(tmp_path, kind):
    """A file that is no checkpoint gets its own one-line error, not torch's advice to load it with
    weights_only=False (which would run the file's code)."""
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("not a checkpoint\n")
        expected = "not a checkpoint \\(not a file written by torch.save\\)"
    else:
        torch.save(nn.Linear(2, 2), path)  # a whole pickled module
        expected = "not a resnet_fast training checkpoint \\(it holds Python objects"
    with pytest.raises(UsageError, match=expected) as error:
        checkpoint.load(str(path))
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_logs_count_epochs_from_one_and_resume_keeps_done_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = logs.JsonLines(str(path))
    log.extend([{"epoch": e, "val_acc": acc} for e, acc in ((1, 0.5), (2, 0.9), (3, 0.9))])
    assert logs.best_epoch(log.records)["epoch"] == 2  # the first of equals, as best.pt keeps
    resumed = logs.JsonLines(str(path), epochs_done=2)  # resuming after 2 epochs: epoch 3 runs again
    assert [r["epoch"] for r in resumed.records] == [1, 2] == [r["epoch"] for r in logs.read_jsonl(str(path))]
    line = train._closing_line(resumed.records, str(tmp_path))
    assert line == f"done: best val acc 90.00% at epoch 2 (best.pt); checkpoints and logs in {tmp_path}"


def test_mismatched_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    state = _real_checkpoint(path)
    loaded = checkpoint.load(str(path))
    with pytest.raises(UsageError, match="trained with --arch resnet18, this run has --arch resnet34"):
        checkpoint.check_fits(loaded, str(path), "resnet34", state["class_names"])
    with pytest.raises(UsageError, match="trained on 10 classes"):
        checkpoint.check_fits(loaded, str(path), "resnet18", ["cat", "dog"])
    with pytest.raises(UsageError, match="missing"):
        load_weights(build_model("resnet34", num_classes=10), loaded["model"], "x")
    shapes = r"2 of another shape \(e.g. fc.bias: \(10,\) in the checkpoint, \(5,\) in the model\)"
    with pytest.raises(UsageError, match=shapes):
        load_weights(build_model("resnet18", num_classes=5), loaded["model"], "x")


def test_for_inference_is_eval_mode_with_the_same_outputs():
    """The fused blocks fold BatchNorm into their convolutions themselves in eval mode without
    autograd, so inference needs no module surgery: the model keeps its state_dict keys."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # non-trivial running statistics
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x).detach()
    model.train()
    folded = for_inference(model)
    assert not any(m.training for m in folded.modules())
    assert list(folded.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- data
def test_digits_split_and_preprocessing():
    spec = data.digits(image_size=16, shift=2)
    assert (len(spec.train), len(spec.val), spec.num_classes) == (1437, 360, 10)
    image, label = spec.train[0]
    assert image.shape == (3, 16, 16) and 0 <= int(label) < 10
    assert spec.val[0][0].shape == (3, 16, 16)
    train_images = torch.stack([spec.val[i][0] for i in range(len(spec.val))])
    assert abs(train_images.mean().item()) < 0.2 and abs(train_images.std().item() - 1) < 0.2


def test_loaders_shard_val_exactly_once():
    spec = data.synthetic(length=40, num_classes=3, image_size=8, seed=0)
    seen = []
    for rank in range(3):
        _, val = data.loaders(spec, batch_size=4, workers=0, rank=rank, world=3, seed=0, pin_memory=False)
        seen += list(val.sampler)
    assert sorted(seen) == list(range(len(spec.val)))


def test_batch_larger_than_data_set():
    spec = data.synthetic(length=8, num_classes=3, image_size=8, seed=0)
    with pytest.raises(UsageError, match="fewer than one batch"):
        data.loaders(spec, batch_size=16, workers=0, rank=0, world=1, seed=0, pin_memory=False)


def test_low_memory_model():
    """--low-memory: every bottleneck of a post-activation model reruns its convolutions in backward;
    a pre-activation model has no such mode and says so."""
    model = build_model("resnet50", num_classes=10, low_memory=True)
    bottlenecks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert bottlenecks and all(b.low_memory for b in bottlenecks) and model.low_memory
    assert not any(b.low_memory for b in build_model("resnet50", num_classes=10).modules()
                   if isinstance(b, Bottleneck))
    with pytest.raises(UsageError, match="--low-memory: preact_resnet18 has no low-memory mode"):
        build_model("preact_resnet18", num_classes=10, low_memory=True)
