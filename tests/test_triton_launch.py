"""The Triton launchers' plan caches and direct launches (resnet_fast/kernels/triton/_launch.py).

Under the interpreter (this process, TRITON_INTERPRET=1 without a GPU): a second call of a signature
reuses its plan and gives the same bits; inputs that need a copy are not cached; bad inputs still get
their one-line error after a plan exists for good ones.

Without the interpreter (a subprocess with tests/_cubin.py's fake sm_90 driver, the compiled kernels'
launcher replaced by a recorder): the direct launch of a kept CompiledKernel passes the launcher exactly
the grid and arguments that ``JITFunction.run`` passed it on the first call, for every primitive; an
unaligned pointer goes back through ``JITFunction.run``.
"""
import json
import os
import subprocess
import sys

import torch

WORKER = __name__ == "__main__" and "--worker" in sys.argv  # the subprocess: compiles, never interprets
if not torch.cuda.is_available() and not WORKER:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if not WORKER:
    pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _calls(device="cpu", dtype=torch.float32, layout=torch.channels_last, shape=(2, 10, 2, 6)):
    """(primitive, zero-argument call) for all six primitives, every optional input present."""
    from resnet_fast.kernels import triton as kernels

    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)

    def act():
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=layout)

    y, res, dout = act(), act(), act()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    nc = (torch.rand(n, c, generator=g) + 0.5).to(device=device, dtype=acc)
    ch = (torch.rand(c, generator=g) + 0.5).to(device=device, dtype=acc)
    return [
        ("bn_stats", lambda: kernels.bn_stats(y)),
        ("bn_finalize", lambda: kernels.bn_finalize(ch, ch, ch, ch, 1e-5, n * h * w, n)),
        ("scale_shift_act", lambda: kernels.scale_shift_act(y, nc, nc, res, ch, ch, True)),
        ("scale_shift_act_backward_reduce", lambda: kernels.scale_shift_act_backward_reduce(
            dout, y, nc, nc, res, ch, ch, True, ch, ch)),
        ("bn_backward_finalize", lambda: kernels.bn_backward_finalize(nc, nc, ch, ch, n * h * w, n, True)),
        ("scale_shift_act_backward_apply", lambda: kernels.scale_shift_act_backward_apply(
            dout, y, nc, nc, res, ch, ch, True, nc, nc, ch, ch, ch, ch, ch, ch)),
    ]


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


# ----------------------------------------------------------------------------- plans (interpreter or GPU)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_second_call_reuses_the_plan_with_the_same_bits(layout):
    from resnet_fast.kernels.triton import _launch

    _launch.clear()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, call in _calls(device, layout=layout):
        first = _outputs(call())
        planned = sum(len(cache) for cache in _launch._PLAN_CACHES)
        assert planned >= 1, name
        second = _outputs(call())
        assert sum(len(cache) for cache in _launch._PLAN_CACHES) == planned, f"{name}: planned again"
        for a, b in zip(first, second):
            assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            assert torch.equal(a, b), name
        _launch.clear()


def test_inputs_needing_a_copy_are_not_cached_and_still_right():
    """A float64 coefficient for float32 y is converted per call (the contract's inputs are not)."""
    import importlib

    from resnet_fast.kernels import triton as kernels
    from resnet_fast.kernels.triton import _launch
    from resnet_fast.ops import primitives as reference

    module = importlib.import_module("resnet_fast.kernels.triton.scale_shift_act")  # the package's name is the op

    _launch.clear()
    y = torch.randn(2, 10, 2, 6).contiguous(memory_format=torch.channels_last)
    scale, shift = torch.rand(2, 10, dtype=torch.float64), torch.randn(2, 10)
    for _ in range(2):
        got = kernels.scale_shift_act(y, scale, shift, None, None, None, True)
        assert not module._PLANS
        torch.testing.assert_close(got, reference.scale_shift_act(y, scale.float(), shift, None, None, None, True))


def test_bad_inputs_still_fail_with_their_message_after_a_plan_exists():
    from resnet_fast.kernels import triton as kernels

    y = torch.randn(2, 10, 2, 6)
    scale = torch.rand(2, 10)
    kernels.scale_shift_act(y, scale, scale, None, None, None, True)  # planned
    with pytest.raises(RuntimeError, match="expected scale of shape"):
        kernels.scale_shift_act(y, torch.rand(2, 9), scale, None, None, None, True)
    with pytest.raises(RuntimeError, match="res_scale given without a residual"):
        kernels.scale_shift_act(y, scale, scale, None, torch.rand(10), torch.rand(10), True)
    kernels.bn_finalize(torch.zeros(4), torch.ones(4), None, None, 1e-5, 8, 0)
    with pytest.raises(RuntimeError, match="var"):
        kernels.bn_finalize(torch.zeros(4), torch.ones(5), None, None, 1e-5, 8, 0)


# ----------------------------------------------------------------------------- direct launches (fake sm_90)
def _record_launches() -> dict:
    """Worker: each primitive called twice with the launcher recorded; then once with an unaligned y."""
    sys.path.insert(0, HERE)
    import _cubin
    from triton.compiler import compiler

    from resnet_fast.kernels.triton import _common

    records = []

    def recorder(grid_x, grid_y, grid_z, stream, function, metadata, launch_metadata, enter, leave, *args):
        records.append(dict(grid=[grid_x, grid_y, grid_z], stream=stream, function=function,
                            direct=enter is None and leave is None and launch_metadata is None,
                            args=[["tensor", str(a.dtype), list(a.shape), list(a.stride())]
                                  if isinstance(a, torch.Tensor) else repr(a) for a in args]))

    def init_handles(self):
        if self._run is None:
            self._run, self.function = recorder, 7

    _cubin.activate(90)
    compiler.CompiledKernel._init_handles = init_handles
    _common.CPU_STANDS_IN_FOR_CUDA = True
    out = {}
    for name, call in _calls(dtype=torch.bfloat16, shape=(4, 64, 14, 14)):
        del records[:]
        call()
        call()
        out[name] = list(records)
    # y at a 2-byte offset: its kernels were compiled for 16-byte aligned pointers
    from resnet_fast.kernels import triton as kernels

    base = torch.randn(4 * 64 * 14 * 14 + 1).to(torch.bfloat16)
    y = base[1:].view(4, 14, 14, 64).permute(0, 3, 1, 2)
    del records[:]
    kernels.bn_stats(y)
    out["unaligned"] = list(records)
    return out


def test_direct_launch_passes_what_jitfunction_run_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("RESNET_FAST_JIT", "0")
    out = tmp_path / "launches.json"
    done = subprocess.run([sys.executable, __file__, "--worker", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"worker failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    results = json.loads(out.read_text())
    for name in ("bn_stats", "bn_finalize", "scale_shift_act", "scale_shift_act_backward_reduce",
                 "bn_backward_finalize", "scale_shift_act_backward_apply"):
        launches = results[name]
        kernels = len(launches) // 2
        assert kernels in (1, 2, 3) and len(launches) == 2 * kernels, name
        first, second = launches[:kernels], launches[kernels:]
        assert not any(r["direct"] for r in first), f"{name}: the first call must go through JITFunction.run"
        assert all(r["direct"] for r in second), f"{name}: the second call must launch directly"
        for jit, direct in zip(first, second):
            for field in ("grid", "stream", "function", "args"):
                assert jit[field] == direct[field], (name, field, jit[field], direct[field])
    unaligned = results["unaligned"]  # stage 1 reads y (through JITFunction.run); the merges do not
    assert len(unaligned) == 3 and not unaligned[0]["direct"] and all(r["direct"] for r in unaligned[1:])


if WORKER:
    result = _record_launches()
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
