"""``weights=`` of the builders: a checkpoint path, a state dict, or a torchvision ``Weights`` enum.

* a path (str or os.PathLike) to a file written by ``torch.save``: a state dict, or a
  training checkpoint holding one under "state_dict", "model" or "model_state_dict";
  "module." (DDP) and "_orig_mod." (torch.compile) key prefixes are removed;
* a state dict (any mapping of names to tensors), e.g. ``torchvision_model.state_dict()``
  or ``timm.create_model("seresnet50").state_dict()``;
* a torchvision ``Weights`` enum member or its name ("IMAGENET1K_V2", "DEFAULT") for the
  torchvision builders: downloaded through torchvision (cached in ``$TORCH_HOME``).

The state dict loads with ``strict=True``. ``num_classes`` defaults to the classifier
size found in the weights; ``num_classes=0`` drops their classifier (a backbone with
pooled features); any other mismatch is an error, as in torchvision.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn

_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefixes(state: Mapping) -> dict:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _unwrap(obj: Any, where: str) -> dict:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _strip_prefixes(obj)
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], where)
    raise ValueError(f"weights: {where} holds no state dict (a mapping of names to tensors, or a checkpoint "
                     f"with one under {', '.join(repr(k) for k in _CHECKPOINT_KEYS)})")


def _torchvision_enum(name: str):
    try:
        import torchvision.models
    except ImportError as error:
        raise ImportError(f"weights: loading torchvision's {name} needs torchvision ({error})") from error
    return getattr(torchvision.models, name)


def load_state_dict(weights: Any, progress: bool = True, torchvision_weights: Optional[str] = None) -> dict:
    """The state dict that ``weights`` designates (see the module docstring)."""
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.exists(weights)):
        return _unwrap(torch.load(weights, map_location="cpu", weights_only=True), f"checkpoint {str(weights)!r}")
    if isinstance(weights, Mapping):
        return _unwrap(weights, "the mapping given")
    if isinstance(weights, str):
        if torchvision_weights is None:
            raise FileNotFoundError(f"weights: no checkpoint file {weights!r} (this model has no torchvision "
                                    f"weights; pass a path or a state dict)")
        try:
            weights = _torchvision_enum(torchvision_weights).verify(weights)
        except (KeyError, ValueError) as error:
            raise FileNotFoundError(f"weights: {weights!r} is neither a checkpoint file nor a member of "
                                    f"torchvision's {torchvision_weights} ({error})") from None
    if hasattr(weights, "get_state_dict") and hasattr(weights, "meta"):  # a torchvision WeightsEnum member
        if torchvision_weights is None or type(weights).__name__ != torchvision_weights:
            expected = torchvision_weights or "a path or a state dict"
            raise ValueError(f"weights: got {type(weights).__name__}.{weights.name}, expected {expected}")
        return weights.get_state_dict(progress=progress, check_hash=True)
    raise TypeError(f"weights: expected a checkpoint path, a state dict or a torchvision Weights enum, "
                    f"got {type(weights).__name__}")


def build(factory: Callable[..., nn.Module], weights: Any, progress: bool, kwargs: dict, *, head: str,
          torchvision_weights: Optional[str] = None) -> nn.Module:
    """``factory(**kwargs)`` with ``weights`` loaded; ``head`` is the classifier's key prefix ("fc.")."""
    if weights is None:
        return factory(**kwargs)
    state = load_state_dict(weights, progress, torchvision_weights)
    head_weight = state.get(head + "weight")
    if head_weight is not None:
        classes = head_weight.shape[0]
        wanted = kwargs.setdefault("num_classes", classes)
        if wanted == 0:
            state = {k: v for k, v in state.items() if not k.startswith(head)}
        elif wanted != classes:
            raise ValueError(f"weights: num_classes={wanted}, but the weights' classifier {head}weight has "
                             f"{classes} classes (use num_classes={classes}, or 0 for a headless backbone)")
    model = factory(**kwargs)
    model.load_state_dict(state, strict=True)
    return model
