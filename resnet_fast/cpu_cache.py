"""The cache of freed CPU output blocks behind the C++ kernels (csrc/cpu/output_cache.h).

The CPU kernels allocate their large outputs (activations and activation gradients of at
least 1 MiB) from blocks that earlier outputs of the same size freed, instead of from
malloc. glibc hands such sizes out as fresh pages that fault on first touch (the kernel
zero-fills each 4 KiB page), which costs as much as a pass over the tensor; training
allocates the same sizes every step, so reusing the blocks removes that cost. torch's own
allocator, and so eager PyTorch in the same process, is not affected.

The cache holds at most ``limit`` bytes of free blocks: ``RESNET_FAST_CPU_CACHE_BYTES`` when
the kernels load (a value that is not a byte count warns), else 1/8 of physical memory or
of the container's (cgroup) memory limit, whichever is lower; 0 turns it off. Memory it holds shows in the
process's resident size, like CUDA's cached blocks, and not in torch's memory profiler.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _extension


class CacheInfo(NamedTuple):
    cached_bytes: int  # free blocks held now
    limit_bytes: int   # most free bytes it holds
    hits: int          # large outputs served from a cached block
    misses: int        # outputs allocated afresh (the cache had no block of that size)


def _ops():
    if not (_extension.load() and hasattr(torch.ops.resnet_fast, "cpu_cache_info")):
        return None
    return torch.ops.resnet_fast


def info() -> CacheInfo:
    """What the cache holds and how often it served; all zero when the C++ kernels are not loaded."""
    ops = _ops()
    return CacheInfo(*ops.cpu_cache_info()) if ops is not None else CacheInfo(0, 0, 0, 0)


def set_limit(limit_bytes: int) -> None:
    """Holds at most ``limit_bytes`` of free blocks (0: no caching); frees what is over it now."""
    if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool) or limit_bytes < 0:
        raise ValueError(f"resnet_fast.cpu_cache.set_limit: expected an int >= 0, got {limit_bytes!r}")
    ops = _ops()
    if ops is not None:
        ops.cpu_cache_set_limit(limit_bytes)


def empty() -> None:
    """Frees every cached block (outputs still alive are not touched)."""
    ops = _ops()
    if ops is not None:
        ops.cpu_cache_empty()
