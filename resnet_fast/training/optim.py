"""SGD without weight decay on BatchNorm and bias parameters; a per-step warm-up + cosine/step schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights decay; BN weights and biases and every bias (1-D tensors) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(parameter_groups(model, weight_decay), lr=lr, momentum=momentum,
                           nesterov=nesterov and momentum > 0)


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, schedule: str,
              step_size: int, gamma: float) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based).

    Warm-up: linear from 1/warmup_steps to 1 over ``warmup_epochs``. Then "cosine": half
    a cosine from 1 to 0 over the remaining steps; "step": ``gamma`` every ``step_size`` epochs.
    """
    warmup = round(warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        total = epochs * steps_per_epoch
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return gamma ** ((step // steps_per_epoch) // step_size)


def scheduler(optimizer: torch.optim.Optimizer, **schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step; ``schedule``: the keywords of ``lr_factor``.

    Its state_dict holds only the step count: the schedule itself comes from the
    command line, so a resumed run may extend ``--epochs``.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **schedule))
