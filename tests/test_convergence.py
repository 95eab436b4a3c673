"""Convergence: two epochs of SGD on real images, fused vs torchvision, step by step.

resnet18 (num_classes=10) built under the same seed on both sides (so also a check that
the seeded init is torchvision's), trained in float64 on 64 of scikit-learn's digits
upscaled to 32x32 RGB, batch 16, SGD with momentum and weight decay, 2 epochs = 8 steps.
Every loss must agree to 1e-9 relative and the final weights and running statistics to
1e-8 (float64 rounding differences, ~1e-14 per step, grow through 8 updates; a wrong
gradient or statistic gives differences of 1e-3 and more), and the loss must fall.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast
from model_utils import assert_close, reference_backend  # noqa: F401

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def digits(n: int = 64):
    data = sklearn_datasets.load_digits()
    images = torch.tensor(data.images[:n], dtype=torch.float64)[:, None] / 16.0  # (n, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    return images, torch.tensor(data.target[:n])


def train(model, images, labels, epochs: int = 2, batch: int = 16):
    model.double().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    order = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=order)
        for i in range(0, len(images), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
    return torch.stack(losses)


def test_two_epochs_match_torchvision_step_by_step():
    images, labels = digits()
    torch.manual_seed(0)
    fused = resnet_fast.resnet18(num_classes=10)
    torch.manual_seed(0)
    eager = torchvision.models.resnet18(num_classes=10)
    fused_losses = train(fused, images, labels)
    eager_losses = train(eager, images, labels)
    for step, (a, b) in enumerate(zip(fused_losses, eager_losses)):
        assert_close(a, b, f"loss at step {step}", tol=1e-9)
    eager_state = eager.state_dict()
    for name, value in fused.state_dict().items():
        if value.is_floating_point():
            assert_close(value, eager_state[name], name, tol=1e-8)
        else:
            assert torch.equal(value, eager_state[name]), name
    assert fused_losses[4:].mean() < 0.5 * fused_losses[:4].mean(), f"loss did not fall: {fused_losses.tolist()}"
