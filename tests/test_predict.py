"""python -m resnet_fast.predict: the checkpoint's preprocessing, softmax, top-k names, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _train_cli import assert_usage_error, run_module
from resnet_fast import predict
from resnet_fast.training import checkpoint
from resnet_fast.training.data import eval_transform
from resnet_fast.training.models import build_model

pytestmark = pytest.mark.timeout(300)

NAMES = ["zero", "one", "two", "three", "four"]


def _checkpoint(path, **preprocessing):
    """A resnet18 checkpoint with trained-looking BN statistics and 5 named classes."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=len(NAMES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 40, 40) * 2 + 1)
    state = {"format": checkpoint.FORMAT, "arch": "resnet18", "num_classes": len(NAMES), "class_names": NAMES,
             "model": model.state_dict(), **preprocessing}
    checkpoint.save_atomic(state, str(path))
    return model.eval()


def _images(tmp_path, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _expected(model, paths, transform, k):
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1).topk(k, dim=1)


def test_predict_uses_the_checkpoints_preprocessing(tmp_path):
    meta = dict(image_size=40, resize_size=48, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    model = _checkpoint(tmp_path / "best.pt", **meta)
    paths = _images(tmp_path, [(64, 48), (50, 90), (40, 40)])
    result = run_module("resnet_fast.predict", *paths, "--checkpoint", str(tmp_path / "best.pt"), "--topk", "3",
                        "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    probs, indices = _expected(model, paths, eval_transform(40, 48, meta["mean"], meta["std"]), 3)
    assert [r["image"] for r in out] == paths
    for r, p_row, i_row in zip(out, probs, indices):
        assert [e["index"] for e in r["top"]] == i_row.tolist()
        assert [e["class"] for e in r["top"]] == [NAMES[i] for i in i_row]
        # BN folded into the convs (eval) vs the unfolded eval model: float32 rounding only
        np.testing.assert_allclose([e["prob"] for e in r["top"]], p_row.numpy(), rtol=1e-4, atol=1e-5)


def test_predict_imagenet_defaults_and_text_output(tmp_path):
    model = _checkpoint(tmp_path / "bare.pt")  # no preprocessing stored: resize 256, crop 224, ImageNet mean/std
    paths = _images(tmp_path, [(300, 260)])
    result = run_module("resnet_fast.predict", *paths, "--checkpoint", str(tmp_path / "bare.pt"), "--topk", "9")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == paths[0] and len(lines) == 1 + len(NAMES)  # top-k capped at the number of classes
    probs, indices = _expected(model, paths, predict.preprocess({}), len(NAMES))
    assert [line.split()[1] for line in lines[1:]] == [NAMES[i] for i in indices[0]]
    shown = [float(line.split()[0].rstrip("%")) for line in lines[1:]]
    np.testing.assert_allclose(shown, 100 * probs[0].numpy(), atol=0.006)
    assert sum(shown) == pytest.approx(100, abs=0.05)


def test_predict_errors(tmp_path):
    _checkpoint(tmp_path / "best.pt", image_size=32, resize_size=32)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    assert_usage_error(run_module("resnet_fast.predict", str(not_image), "--checkpoint", str(tmp_path / "best.pt")),
                       "notes.txt", "cannot read it as an image")
    assert_usage_error(run_module("resnet_fast.predict", str(not_image), "--checkpoint", str(tmp_path / "none.pt")),
                       "--checkpoint", "no such file")
    assert_usage_error(run_module("resnet_fast.predict", "--checkpoint", str(tmp_path / "best.pt")),
                       "IMAGE")
