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

The convolution primitives (``ops/primitives.py`` CONV_SCHEMAS) run from ``conv_primitives(device)``:
the Triton launchers; under the interpreter (CPU tensors) while torch.compile traces, the registered
``torch.ops.resnet_fast.conv_*`` ops instead (their CPU kernel is the plain-torch reference: Dynamo
rejects interpreted Triton kernels, so a CPU compile checks the tracing, not the Triton numerics).
"""
from __future__ import annotations

import collections
import functools
import json
import os
from typing import Optional, Sequence

import torch

from .ops import primitives as _primitives

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


@torch.compiler.assume_constant_result  # a constant of the process: torch.compile must not trace the file read
def has_table() -> bool:
    """Whether a conv table with any choice is in use (``auto`` has nothing to decide without one)."""
    return bool(load_table())


def table_choice(key: str) -> Optional[str]:
    """What the table says for ``key`` ("triton" / "aten"), or None when it has no entry."""
    return load_table().get(key)


# ----------------------------------------------------------------------------- where the fused chain runs
def runs_on(device: torch.device) -> Optional[str]:
    """None when the Triton convolutions can run tensors on ``device``, else why not."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as error:
            return f"triton is not importable ({error})"
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            return "CPU tensors run the Triton convolutions only under TRITON_INTERPRET=1 (the Triton interpreter)"
        return None
    return f"tensors on {device.type} (the Triton convolutions need CUDA tensors)"


def _gpu_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


# (a constant of the process for torch.compile: the table and the GPU do not change under a compiled graph)
@torch.compiler.assume_constant_result
def table_chooses_triton(device: torch.device, dtype: torch.dtype, layers: Sequence[tuple]) -> bool:
    """Whether the table chose "triton" for every layer of a block's chain on ``device`` (``auto``).

    ``layers``: (in_channels, height, width, out_channels, kernel_size, stride) per convolution, as
    ``table_key`` takes them. A block runs its chain fused or not at all (the convolutions between
    its BatchNorms exchange raw outputs and prologue coefficients), so one layer without a "triton"
    entry keeps the whole block on ATen.
    """
    if device.type != "cuda":
        return False
    table = load_table()
    if not table:
        return False
    name = _gpu_name(device.index if device.index is not None else torch.cuda.current_device())
    return all(table.get(table_key(name, dtype, *layer)) == "triton" for layer in layers)


# ----------------------------------------------------------------------------- the convolution primitives
ConvPrimitives = collections.namedtuple("ConvPrimitives", list(_primitives.CONV_PRIMITIVES))
CONV_REFERENCE = ConvPrimitives(**_primitives.CONV_PRIMITIVES)  # plain torch (forward-mode AD)


_tables: dict[str, ConvPrimitives] = {}  # "triton" / "ops" -> table, built at first use (plain dict: Dynamo reads it)


def _table(kind: str) -> ConvPrimitives:
    table = _tables.get(kind)
    if table is None:
        if kind == "triton":
            from .kernels.triton.conv import primitives as triton_conv

            table = ConvPrimitives(**{name: getattr(triton_conv, name) for name in _primitives.CONV_PRIMITIVES})
        else:
            table = ConvPrimitives(**{name: getattr(torch.ops.resnet_fast, name).default
                                      for name in _primitives.CONV_PRIMITIVES})
        _tables[kind] = table
    return table


def conv_primitives(device: torch.device) -> ConvPrimitives:
    """The convolution primitives the fused chain calls for tensors on ``device``: the Triton launchers;
    on CPU tensors (the interpreter) while torch.compile traces, the registered ops (module docstring)."""
    if device.type == "cpu" and torch.compiler.is_compiling():
        return _table("ops")
    return _table("triton")
