"""The one place the entry points build models: the package's fused model zoo."""
from __future__ import annotations

import difflib

import torch
from torch import nn

import resnet_fast

from . import UsageError

def available_archs() -> list[str]:
    """Names ``--arch`` accepts."""
    return sorted(resnet_fast.list_models())


def check_arch(arch: str) -> None:
    archs = available_archs()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(archs)}"
        raise UsageError(f"unknown --arch {arch!r}; {hint}")


def build_model(arch: str, num_classes: int, *, zero_init_residual: bool = False,
                low_memory: bool = False) -> nn.Module:
    """A freshly initialized ``arch`` with a ``num_classes``-way classifier.

    ``zero_init_residual``: the last BN of each residual branch starts at zero, so every
    block starts as the identity (torchvision's builder option of that name).
    ``low_memory``: ``ResNet.set_low_memory()`` (convolutions rerun in backward instead of
    their outputs kept); the post-activation builders have it, the pre-activation ones not.
    """
    check_arch(arch)
    kwargs = {"zero_init_residual": True} if zero_init_residual else {}
    model = resnet_fast.get_model(arch, num_classes=num_classes, **kwargs)
    if low_memory:
        if not hasattr(model, "set_low_memory"):
            raise UsageError(f"--low-memory: {arch} has no low-memory mode (the ResNet, ResNeXt, Wide and SE "
                             f"builders have it)")
        model.set_low_memory()
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode: the fused models then fold BatchNorm into their convolutions."""
    return model.eval()


@torch.no_grad()
def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """``model.load_state_dict`` with a one-line explanation when the keys or shapes do not fit."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state_dict[k].shape)} in the "
                        f"checkpoint, {tuple(own[k].shape)} in the model)")
    if problems:
        raise UsageError(f"{source} does not fit the model: weights {'; '.join(problems)}")
    model.load_state_dict(state_dict)
