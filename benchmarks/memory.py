"""Bytes an autograd graph keeps for backward ("saved-for-backward bytes").

Counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor an op saves
(``ctx.save_for_backward`` in the fused ops, the saved variables of aten ops, the
tensors torch.compile's graphs keep) passes through the pack hook. Tensors are counted
once per underlying storage (a view, or the same tensor saved by two ops, costs nothing
extra), at the storage's full size; parameters and buffers, which exist whether or not
backward runs, are excluded.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence, Union

import torch

Tensor = torch.Tensor


def _storage_key(t: Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_bytes(model_or_fn: Union[torch.nn.Module, Callable], inputs: Sequence = (), *,
                exclude: Iterable[Tensor] = (), context=None) -> int:
    """Bytes of the unique storages saved for backward by one call ``model_or_fn(*inputs)``.

    ``model_or_fn``: an ``nn.Module`` (its parameters and buffers are excluded) or any
    callable (pass its parameters in ``exclude``). ``context``: an optional context manager
    to call it under (autocast, say). The graph is built and then dropped; nothing is
    run backward.
    """
    excluded = {_storage_key(t) for t in exclude if t is not None}
    if isinstance(model_or_fn, torch.nn.Module):
        excluded |= {_storage_key(t) for t in model_or_fn.parameters()}
        excluded |= {_storage_key(t) for t in model_or_fn.buffers()}
    seen: dict[int, int] = {}

    def pack(t: Tensor):
        if t.device.type != "meta" and not t.is_sparse:
            ptr, nbytes = _storage_key(t)
            if ptr != 0 and (ptr, nbytes) not in excluded:
                # One storage may be seen through views of different extents: keep the largest.
                seen[ptr] = max(seen.get(ptr, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), (context or contextlib.nullcontext()):
        out = model_or_fn(*inputs)
    del out
    return sum(seen.values())
