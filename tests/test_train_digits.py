"""Training learns: the digits data set on CPU (short in CI, the documented recipe under -m slow).

Also: AMP (bf16, fp16 with a GradScaler) and channels_last runs, the logs and the plot.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from _train_cli import run_module
from resnet_fast import train
from resnet_fast.training import data
from resnet_fast.training.logs import read_jsonl

# docs/training.md: the command whose time and accuracy it reports.
RECIPE = ["--data", "digits", "--arch", "resnet18"]


@pytest.mark.timeout(300)
def test_one_short_digits_epoch_learns(tmp_path):
    """One epoch (44 steps of 32 images, 16x16): far above chance (10%)."""
    start = time.perf_counter()
    assert train.main([*RECIPE, "--epochs", "1", "--no-progress", "--plot", "--output-dir", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert record["val_acc"] > 0.4, record
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert len(steps) == 1437 // 32
    assert record["epoch"] == 1 and {s["epoch"] for s in steps} == {1}  # counted from 1, as the console
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert {p.name for p in tmp_path.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "steps.jsonl"}
    print(f"1 digits epoch: val acc {record['val_acc']:.3f} in {elapsed:.0f} s")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flags", [["--amp", "bf16", "--channels-last"], ["--amp", "fp16"]], ids=["bf16-nhwc", "fp16"])
def test_amp_and_channels_last(tmp_path, flags):
    args = ["--data", "synthetic", "--image-size", "32", "--num-classes", "10", "--synthetic-images", "32",
            "--batch-size", "8", "--limit-batches", "2", "--epochs", "1", "--no-progress", "--output-dir",
            str(tmp_path), *flags]
    assert train.main(args) == 0
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert bool(state["scaler"]) == ("fp16" in flags)  # a GradScaler's state only where one is enabled


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_digits_recipe_reaches_95_percent(tmp_path):
    """The documented command: >= 95% validation accuracy in under 5 minutes on CPU; predict agrees."""
    start = time.perf_counter()
    result = run_module("resnet_fast.train", *RECIPE, "--no-progress", "--output-dir", str(tmp_path), timeout=900)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    final = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    print(f"digits recipe: val acc {final['val_acc']:.4f} in {elapsed:.0f} s")
    assert final["val_acc"] >= 0.95, final
    assert elapsed < 300, f"took {elapsed:.0f} s"

    # predict on 8x8 PNGs of validation digits: the checkpoint's preprocessing reproduces training's
    images, labels, _, val_idx = data.digits_split()
    paths = []
    for i in val_idx[:60].tolist():
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.round(images[i].numpy() * 255).astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    result = run_module("resnet_fast.predict", *paths, "--checkpoint", str(tmp_path / "last.pt"), "--json")
    assert result.returncode == 0, result.stderr
    predicted = [int(r["top"][0]["class"]) for r in json.loads(result.stdout)]
    accuracy = np.mean(np.array(predicted) == labels[val_idx[:60]].numpy())
    assert accuracy >= 0.9, accuracy
