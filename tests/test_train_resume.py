"""--resume continues a run exactly: the same losses step for step, the same final weights (CPU)."""
from __future__ import annotations

import shutil

import pytest
import torch

from resnet_fast import train
from resnet_fast.training.logs import read_jsonl

pytestmark = pytest.mark.timeout(300)

# digits with the random-shift augmentation (so the RNG state matters), 3 steps per epoch
ARGS = ["--data", "digits", "--image-size", "16", "--batch-size", "32", "--limit-batches", "3", "--epochs", "2",
        "--lr", "0.05", "--warmup-epochs", "0.5", "--nesterov", "--label-smoothing", "0.1", "--no-progress",
        "--device", "cpu", "--keep-checkpoints"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert train.main([*ARGS, "--output-dir", str(out)]) == 0
    return out


def test_resume_matches_uninterrupted_run(uninterrupted, tmp_path):
    # The run stopped after epoch 1: its directory as it was then, logs included.
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted, resumed)
    shutil.copyfile(uninterrupted / "epoch_001.pt", resumed / "last.pt")
    assert train.main([*ARGS, "--output-dir", str(resumed), "--resume", str(resumed / "last.pt")]) == 0

    assert read_jsonl(resumed / "steps.jsonl") == read_jsonl(uninterrupted / "steps.jsonl")
    assert len(read_jsonl(resumed / "steps.jsonl")) == 6
    expected, got = read_jsonl(uninterrupted / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    timing = ("img_per_s", "train_time_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in got] == \
           [{k: v for k, v in r.items() if k not in timing} for r in expected]
    a = torch.load(uninterrupted / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def test_resume_with_another_arch_is_refused(uninterrupted, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([*ARGS, "--arch", "resnet34", "--output-dir", str(uninterrupted / "other"),
                    "--resume", str(uninterrupted / "last.pt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "trained with --arch resnet18, this run has --arch resnet34" in err and "\n" not in err


def test_resume_of_a_finished_run_does_nothing(uninterrupted, capsys):
    assert train.main([*ARGS, "--output-dir", str(uninterrupted / "again"),
                       "--resume", str(uninterrupted / "last.pt")]) == 0
    assert "nothing to do" in capsys.readouterr().out
