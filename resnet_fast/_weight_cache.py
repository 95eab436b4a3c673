"""``resnet_fast.inference_cache()``: fold BatchNorm into the convolution weights once per scope, not per call.

In inference the fused models fold each BatchNorm into its convolution (w * gamma/sigma),
which costs a pass over every weight on every forward, and hand oneDNN a plain weight it
reorders into its blocked layout on every call. At batch 16 that is a few percent of a
ResNet-50 forward on the CPU; at batch 1 it is most of it (the weights outweigh the
activations). Inside ``with resnet_fast.inference_cache():`` both happen once per
convolution; the result is reused by every later call in the scope::

    model.eval()
    with torch.no_grad(), resnet_fast.inference_cache():
        for images in loader:
            logits = model(images)

The contract is ``torch.nn.utils.parametrize.cached()``'s: parameters and BatchNorm buffers
must not change inside the scope (entries are keyed by tensor identity, not content).
Leaving the scope drops everything it cached. Scopes are per thread and may nest (an inner
scope caches apart from the outer one).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import torch

T = TypeVar("T")

_local = threading.local()


@contextlib.contextmanager
def inference_cache() -> Iterator[None]:
    """Within the scope, folded (and oneDNN-prepacked) convolution weights are computed once."""
    stack = _stack()
    stack.append({})
    try:
        yield
    finally:
        stack.pop()


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def cached(tensors: Sequence[Optional[torch.Tensor]], config: tuple, build: Callable[[], T]) -> T:
    """``build()``, or what it returned for the same ``tensors`` (by identity) and ``config``
    earlier in the innermost active scope. Outside any scope (and while tracing for
    torch.compile, where a cache would be baked into the graph) always ``build()``."""
    if not active():
        return build()
    store = _stack()[-1]
    key = tuple(id(t) for t in tensors) + config
    entry = store.get(key)
    if entry is None:
        # The tensors stay referenced by the entry, so their ids cannot be reused in the scope.
        entry = store[key] = (tuple(tensors), build())
    return entry[1]


def active() -> bool:
    """Whether ``cached`` keeps what it builds (a scope is active and nothing is being traced)."""
    return bool(_stack()) and not torch.compiler.is_compiling()


def cache_size() -> int:
    """Entries in the innermost active scope (0 outside any)."""
    stack = _stack()
    return len(stack[-1]) if stack else 0
