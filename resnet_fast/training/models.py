"""The one place the entry points build models: the package's zoo, else torchvision's builders.

``resnet_fast.get_model`` / ``resnet_fast.list_models`` (the fused model zoo) are used
when the package has them; until then torchvision's ResNet family stands in, with the
same builder names, signatures and state_dict keys.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

import resnet_fast

from . import UsageError

_TORCHVISION_FAMILY = ("resnet", "resnext", "wide_resnet")


def _zoo_has_models() -> bool:
    return hasattr(resnet_fast, "get_model") and hasattr(resnet_fast, "list_models")


def available_archs() -> list[str]:
    """Names ``--arch`` accepts."""
    if _zoo_has_models():
        return sorted(resnet_fast.list_models())
    from torchvision import models

    return sorted(name for name in models.list_models(module=models) if name.startswith(_TORCHVISION_FAMILY))


def check_arch(arch: str) -> None:
    archs = available_archs()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(archs)}"
        raise UsageError(f"unknown --arch {arch!r}; {hint}")


def build_model(arch: str, num_classes: int, *, zero_init_residual: bool = False) -> nn.Module:
    """A freshly initialized ``arch`` with a ``num_classes``-way classifier.

    ``zero_init_residual``: the last BN of each residual branch starts at zero, so every
    block starts as the identity (torchvision's builder option of that name).
    """
    check_arch(arch)
    kwargs = {"zero_init_residual": True} if zero_init_residual else {}
    if _zoo_has_models():
        return resnet_fast.get_model(arch, num_classes=num_classes, **kwargs)
    from torchvision import models

    return models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with BatchNorm folded into the preceding convolutions.

    The fused models fold BN inside their ops in eval mode; an eager model (torchvision's)
    is folded here by torch.fx's Conv-BN fusion. A model fx cannot trace runs unfolded.
    """
    model = model.eval()
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # noqa: BLE001  (untraceable: the fused models, which fold by themselves)
        return model


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
