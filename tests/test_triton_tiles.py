"""The Triton primitives' launch parameters (resnet_fast/kernels/triton/_tiles.py): a deterministic rule keyed by
everything that changes the kernel, overridable by a shipped table, never timed at run time."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from resnet_fast.kernels.triton import _tiles  # noqa: E402

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLAGS = dict(HAS_RES=True, RES_AFFINE=True, RELU=True, RES_SUM=True)


@pytest.fixture
def gpu_rule(monkeypatch):
    """The rule as it is on a GPU (the interpreter's tiles are tiny on purpose)."""
    monkeypatch.setattr(_tiles, "INTERPRETED", False)
    monkeypatch.setattr(_tiles, "_TABLE", {})


def test_key_names_every_input():
    base = _tiles.table_key("ssa_bwd_reduce_partial", torch.float64, True, FLAGS, 256, 196)
    assert base == "ssa_bwd_reduce_partial/float64/nhwc/HAS_RES=1,RELU=1,RES_AFFINE=1,RES_SUM=1/C=256/HW=196"
    others = [_tiles.table_key("ssa_bwd_reduce_partial", torch.float64, True, dict(FLAGS, RES_SUM=False), 256, 196),
              _tiles.table_key("ssa_bwd_reduce_partial", torch.float32, True, FLAGS, 256, 196),
              _tiles.table_key("ssa_bwd_reduce_partial", torch.float64, False, FLAGS, 256, 196),
              _tiles.table_key("ssa_bwd_reduce_partial", torch.float64, True, FLAGS, 255, 196),
              _tiles.table_key("ssa_bwd_reduce_partial", torch.float64, True, FLAGS, 256, 197),
              _tiles.table_key("bn_stats_partial", torch.float64, True, FLAGS, 256, 196)]
    assert len({base, *others}) == 7


@pytest.mark.parametrize("kernel", _tiles.ELEMENTWISE_KERNELS + _tiles.REDUCE_KERNELS)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rule_tiles_fit_registers(gpu_rule, kernel, channels_last, dtype):
    """Powers of two, and at most 16 values per thread and tensor (8 for fp64 in the reductions, whose
    accumulators are fp64 too: 64 x 32 spilled on sm_90); tests/test_triton_cubins.py checks ptxas agrees."""
    for c in (1, 3, 33, 64, 256, 2048):
        for hw in (1, 49, 196, 3136, 12544):
            tile = _tiles.pick(kernel, dtype, channels_last, FLAGS, c, hw)
            assert tile == _tiles.pick(kernel, dtype, channels_last, FLAGS, c, hw)  # a pure function
            for size in tile:
                assert size & (size - 1) == 0
            per_thread = tile.block_c * tile.block_hw // (32 * tile.num_warps)
            budget = 8 if dtype == torch.float64 and kernel in _tiles.REDUCE_KERNELS else 16
            assert per_thread <= budget, (c, hw, tile)
            if channels_last:  # 16-byte accesses along c need at least 16 bytes of channels per row
                assert tile.block_c * dtype.itemsize >= 16


def test_table_entry_overrides_the_rule_for_its_key_only(gpu_rule, monkeypatch):
    key = _tiles.table_key("scale_shift_act", torch.bfloat16, True, dict(HAS_RES=True, RES_AFFINE=False, RELU=True),
                           256, 196)
    monkeypatch.setattr(_tiles, "_TABLE", {key: _tiles.Tile(128, 16, 8)})
    flags = dict(HAS_RES=True, RES_AFFINE=False, RELU=True)
    assert _tiles.pick("scale_shift_act", torch.bfloat16, True, flags, 256, 196) == _tiles.Tile(128, 16, 8)
    assert _tiles.pick("scale_shift_act", torch.bfloat16, True, dict(flags, RELU=False), 256, 196) == \
        _tiles.rule("scale_shift_act", torch.bfloat16, True, dict(flags, RELU=False), 256, 196)


def test_no_autotuner_left():
    """Run-time autotuning would make the summation order (and the bits) depend on timing."""
    import importlib

    import triton
    for name in ("bn_stats", "scale_shift_act", "scale_shift_act_backward"):
        module = importlib.import_module(f"resnet_fast.kernels.triton.{name}")
        assert not [v for v in vars(module).values() if isinstance(v, triton.runtime.Autotuner)], name
