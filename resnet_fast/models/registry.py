"""Model registry: ``get_model(name, **kwargs)`` and ``list_models()`` for the training script."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register builder ``fn`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"register_model: {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def append_doc(text: str):
    """Decorator appending ``text`` to a builder's docstring (the weights/kwargs paragraph builders share)."""
    def decorate(fn: Callable) -> Callable:
        fn.__doc__ = (fn.__doc__ or "") + text
        return fn
    return decorate


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Build model ``name`` (e.g. "resnet50", "se_resnext50_32x4d", "preact_resnet18") with ``kwargs``.

    ``kwargs`` are the builder's: ``weights``, ``progress``, ``num_classes``, ... .
    """
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"get_model: unknown model {name!r}; available: {', '.join(list_models())}") from None
    return builder(**kwargs)
