"""Which convolution the fused blocks run: ATen's, or the Triton kernels with BN-ReLU fused in.

Backends:
  "aten"    torch's convolution (cuDNN on CUDA, oneDNN on CPU), then the BatchNorm/ReLU
            primitives of ``resnet_fast.set_backend``'s backend.
  "triton"  the fused implicit-GEMM kernels (resnet_fast/kernels/triton/conv): BN statistics
            in the convolution's epilogue, the producer's BN+ReLU in the next one's prologue.
            CUDA tensors, or CPU tensors under TRITON_INTERPRET=1. A layer they cannot run
            raises an error that names what is not covered.
  "auto"    (default) per layer: the choice the GPU benchmark recorded for this (GPU, dtype,
            layer shape) in resnet_fast/conv_table.json (or the file RESNET_FAST_CONV_TABLE
            names), and "aten" where it has none (and always on CPU tensors).

Pick one with ``resnet_fast.set_conv_backend(name)`` or ``RESNET_FAST_CONV_BACKEND=name``.
The table is written by ``benchmarks/conv_layers.py`` on a GPU; its keys come from
``table_key`` so that writer and reader cannot drift apart.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import torch

CONV_BACKENDS = ("aten", "triton", "auto")
# The shipped table; RESNET_FAST_CONV_TABLE names another (the GPU run points its model rows at the
# table its conv_layers phase just wrote).
TABLE_PATH = os.environ.get("RESNET_FAST_CONV_TABLE") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                      "conv_table.json")

_selected = os.environ.get("RESNET_FAST_CONV_BACKEND", "auto")


def set_conv_backend(name: str) -> None:
    """Run the blocks' convolutions through ``name`` (one of ``CONV_BACKENDS``)."""
    global _selected
    if name not in CONV_BACKENDS:
        raise ValueError(f"resnet_fast.set_conv_backend: unknown convolution backend {name!r}; "
                         f"expected one of {CONV_BACKENDS}")
    _selected = name


def get_conv_backend() -> str:
    """The convolution backend chosen by ``set_conv_backend`` (or RESNET_FAST_CONV_BACKEND)."""
    if _selected not in CONV_BACKENDS:
        raise ValueError(f"RESNET_FAST_CONV_BACKEND={_selected!r} is not a convolution backend; "
                         f"expected one of {CONV_BACKENDS}")
    return _selected


def table_key(gpu_name: str, dtype: torch.dtype, in_channels: int, height: int, width: int, out_channels: int,
              kernel_size: int, stride: int) -> str:
    """The conv table's key of one layer: GPU name, activation dtype, input C x H x W, output
    channels, square kernel size and stride (the batch size is left out: the table is measured at
    the training batch, and the choice rarely flips with it)."""
    return (f"{gpu_name}|{str(dtype).removeprefix('torch.')}|{in_channels}x{height}x{width}"
            f"|{out_channels}|k{kernel_size}s{stride}")


@functools.lru_cache(maxsize=None)
def load_table(path: str = TABLE_PATH) -> dict[str, str]:
    """The shipped table's choices, key -> "triton" or "aten"; empty when there is no table."""
    try:
        with open(path) as f:
            choices = json.load(f).get("choice", {})
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in choices.items() if v in ("triton", "aten")}


def table_choice(key: str) -> Optional[str]:
    """What the table says for ``key`` ("triton" / "aten"), or None when it has no entry."""
    return load_table().get(key)
