"""The cache of freed CPU output blocks (csrc/cpu/output_cache.cpp, resnet_fast.cpu_cache).

Outputs of at least 1 MiB come from blocks that earlier outputs of the same size freed. These
tests check that a freed block is reused, that a reused block never shows its old contents
(every output is compared with the primitive's specification after the block was filled with
NaN), that the output keeps y's strides in both memory formats, the limit and its eviction,
``empty()``, resizing a cached output, moving it to shared memory, concurrent use, use in a
forked child, the environment variable, and bad arguments.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import torch

import resnet_fast
from resnet_fast import _extension, cpu_cache
from resnet_fast.ops import primitives as P

pytestmark = pytest.mark.skipif(
    not (_extension.load() and torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast::bn_stats", "CPU")),
    reason=f"the C++ CPU kernels are not built/loaded ({_extension.status.get('error')})")

OPS = torch.ops.resnet_fast
LARGE = (2, 64, 48, 48)  # 1.1 MiB of float32: just above the 1 MiB threshold
FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty cache and the limit it found, and leaves them so."""
    limit = cpu_cache.info().limit_bytes
    cpu_cache.set_limit(1 << 30)
    cpu_cache.empty()
    yield
    cpu_cache.empty()
    cpu_cache.set_limit(limit)


def _inputs(shape=LARGE, memory_format=torch.channels_last, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=memory_format)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.rand(shape[:2], generator=g, dtype=acc) + 0.5
    shift = torch.randn(shape[:2], generator=g, dtype=acc)
    return y, scale, shift


def _forward(y, scale, shift):
    return OPS.scale_shift_act(y, scale, shift, None, None, None, True)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_freed_output_block_is_reused_and_overwritten(memory_format):
    y, scale, shift = _inputs(memory_format=memory_format)
    first = _forward(y, scale, shift)
    address = first.data_ptr()
    first.fill_(float("nan"))  # what a reused block must never show
    del first
    assert cpu_cache.info().cached_bytes >= y.numel() * y.element_size()
    hits = cpu_cache.info().hits
    y2, scale2, shift2 = _inputs(memory_format=memory_format, seed=1)
    second = _forward(y2, scale2, shift2)
    assert second.data_ptr() == address
    assert cpu_cache.info().hits == hits + 1
    assert second.stride() == y2.stride()
    torch.testing.assert_close(second, P.scale_shift_act(y2, scale2, shift2, None, None, None, True))


@pytest.mark.parametrize("shape", [LARGE, (4096, 80, 1, 1), (1, 3, 300, 301)], ids=str)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cached_outputs_keep_strides_and_values(shape, memory_format, dtype):
    for seed in range(2):  # the second round reuses the first's blocks
        y, scale, shift = _inputs(shape, memory_format, dtype, seed)
        grad = torch.randn_like(y)
        out = _forward(y, scale, shift)
        center = torch.zeros(shape[1], dtype=scale.dtype)
        k_g, k_0, k_y = scale, shift, torch.rand(shape[1], dtype=scale.dtype)
        grad_y, _ = OPS.scale_shift_act_backward_apply(grad, y, scale, shift, None, None, None, True,
                                                       k_g, k_0, k_y, center, None, None, None, None)
        assert out.stride() == y.stride() and grad_y.stride() == y.stride()
        torch.testing.assert_close(out, P.scale_shift_act(y, scale, shift, None, None, None, True))
        expected, _ = P.scale_shift_act_backward_apply(grad, y, scale, shift, None, None, None, True,
                                                       k_g, k_0, k_y, center, None, None, None, None)
        torch.testing.assert_close(grad_y, expected)
        out.fill_(float("nan"))
        grad_y.fill_(float("nan"))
        del out, grad_y
    assert cpu_cache.info().hits >= 2 or y.numel() * y.element_size() < (1 << 20)


def test_small_outputs_bypass_the_cache():
    y, scale, shift = _inputs((2, 8, 8, 8))
    before = cpu_cache.info()
    _forward(y, scale, shift)  # freed at once
    assert cpu_cache.info() == before and before.cached_bytes == 0


def test_limit_bounds_what_is_kept_and_zero_turns_caching_off():
    y, scale, shift = _inputs()
    outs = [_forward(y, scale, shift) for _ in range(3)]
    block = cpu_cache.info().misses and outs[0].untyped_storage().nbytes()
    del outs
    held = cpu_cache.info().cached_bytes
    assert held >= 3 * block
    cpu_cache.set_limit(held // 2)  # evicts down to the new limit now
    assert cpu_cache.info().cached_bytes <= held // 2
    cpu_cache.set_limit(0)
    assert cpu_cache.info().cached_bytes == 0
    _forward(y, scale, shift)  # freed at once
    assert cpu_cache.info().cached_bytes == 0


def test_empty_frees_cached_blocks_but_not_live_outputs():
    y, scale, shift = _inputs()
    live = _forward(y, scale, shift)
    _forward(y, scale, shift)  # freed at once
    assert cpu_cache.info().cached_bytes > 0
    cpu_cache.empty()
    assert cpu_cache.info().cached_bytes == 0
    torch.testing.assert_close(live, P.scale_shift_act(y, scale, shift, None, None, None, True))


def test_cached_output_can_be_resized():
    y, scale, shift = _inputs(memory_format=torch.contiguous_format)
    out = _forward(y, scale, shift)
    expected = out.clone()
    out.resize_(2 * out.numel())  # the storage grows through the cache's allocator
    torch.testing.assert_close(out[: expected.numel()], expected.flatten(), rtol=0, atol=0)
    del out


def test_cached_output_moves_to_shared_memory():
    y, scale, shift = _inputs()
    out = _forward(y, scale, shift)
    expected = out.clone()
    out.share_memory_()  # (DataLoader workers, multiprocessing queues)
    assert out.is_shared()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert cpu_cache.info().cached_bytes > 0  # the block it left went back to the cache


def test_concurrent_use_from_threads():
    y, scale, shift = _inputs()
    expected = P.scale_shift_act(y, scale, shift, None, None, None, True)
    errors = []

    def work():
        try:
            for _ in range(10):
                out = _forward(y, scale, shift)
                if not torch.allclose(out, expected):
                    errors.append("mismatch")
                del out
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _child_forward(seed):
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP does not survive a fork
    y, scale, shift = _inputs(seed=seed)
    return torch.allclose(_forward(y, scale, shift), P.scale_shift_act(y, scale, shift, None, None, None, True))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_child_uses_the_inherited_cache():
    y, scale, shift = _inputs()
    _forward(y, scale, shift)  # freed at once: a cached block, inherited by the child
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_child_forward, [1, 2]) == [True, True]


def _limit_in_child(value: str) -> tuple[int, str]:
    code = "import resnet_fast; print(resnet_fast.cpu_cache.info().limit_bytes)"
    env = dict(os.environ, RESNET_FAST_CPU_CACHE_BYTES=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip()), out.stderr


def test_environment_variable_sets_the_limit():
    assert _limit_in_child("12345")[0] == 12345
    assert _limit_in_child("0")[0] == 0


@pytest.mark.parametrize("value", ["lots", "-5", "12MB"])
def test_bad_environment_variable_warns_and_keeps_the_default(value):
    limit, stderr = _limit_in_child(value)
    assert limit > 0
    assert "RESNET_FAST_CPU_CACHE_BYTES" in stderr and "not a byte count" in stderr


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_limit_is_refused(bad):
    with pytest.raises(ValueError, match="set_limit"):
        cpu_cache.set_limit(bad)
    with pytest.raises(RuntimeError, match="limit_bytes"):
        OPS.cpu_cache_set_limit(-1)


def test_package_exports_cpu_cache():
    assert resnet_fast.cpu_cache is cpu_cache
    assert set(cpu_cache.CacheInfo._fields) == {"cached_bytes", "limit_bytes", "hits", "misses"}
