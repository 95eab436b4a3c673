"""Op-level benchmarks: each fused op against its eager composition and torch.compile of it.

Rows: op x ResNet-50 stage shape x mode x contender.
  modes      fwd (training forward, graph built), bwd (backward only, one retained graph),
             fwdbwd (both), infer (eval + no_grad: running statistics, BN folded)
  contenders eager (resnet_fast.ops.reference: F.conv2d / F.batch_norm / relu / add),
             compile (torch.compile of that eager function), rf_<backend> (resnet_fast.ops.<op>)
Every contender is first compared with eager on identical inputs (output, and gradients for
the backward modes); the error is recorded and, in smoke mode, asserted. ``test_copy``
times a plain device copy of the same activation: the bandwidth ceiling for GB/s.
"""
from __future__ import annotations

import pytest
import torch

import resnet_fast
from resnet_fast.ops import reference

import bench_cases as cases
import bench_config as config
import bench_harness as harness
import memory

S = config.settings()


def _stage_id(stage) -> str:
    return f"s{S.stages.index(stage) + 1}"


OP_PARAMS = [pytest.param(op, stage, mode, contender, id=f"{op}-{_stage_id(stage)}-{mode}-{contender}")
             for op in config.OPS for stage in S.stages for mode in config.OP_MODES
             for contender in S.op_contenders()]


def _function(op: str, contender: str, set_backend):
    if contender.startswith(config.RF_PREFIX):
        set_backend(contender[len(config.RF_PREFIX):])
    return harness.op_function(op, contender)


def _check(fn, op, stage, mode) -> float:
    """Relative error of the contender against eager on fresh identical inputs."""
    results = []
    for f in (fn, getattr(reference, op)):
        case = cases.make_op_case(op, stage, S.op_batch, S.device, S.act_dtype, seed=0)
        with harness.autocast(S):
            results.append(cases.op_step(f, case, mode)())
    return harness.max_rel_err(*results)


@pytest.mark.parametrize("op, stage, mode, contender", OP_PARAMS)
def test_op(benchmark, restore_backend, op, stage, mode, contender):
    benchmark.group = f"{op} {mode} {'x'.join(map(str, cases.op_shapes(op, stage, S.op_batch)[0]))}"
    fn = _function(op, contender, restore_backend)
    err = 0.0 if contender == "eager" else _check(fn, op, stage, mode)
    harness.check_close(err, S.act_dtype, f"{op} {mode} {contender}", S)

    case = cases.make_op_case(op, stage, S.op_batch, S.device, S.act_dtype, seed=0)
    saved = None
    if mode != "infer":
        try:
            with harness.autocast(S):
                saved = memory.saved_bytes(lambda: case.call(fn, training=True), exclude=case.params + case.buffers)
        except Exception as error:  # noqa: BLE001 (some compiled graphs refuse saved-tensor hooks)
            saved = f"n/a ({type(error).__name__})"
    with harness.autocast(S):
        step = cases.op_step(fn, case, mode)
        inner = harness.calibrate_inner(step, S)
        elem = torch.finfo(S.act_dtype).bits // 8
        harness.record(benchmark, kind="op", op=op, mode=mode, contender=contender,
                       shape=list(case.shape), stage=_stage_id(stage),
                       bytes=cases.op_bytes(op, mode, stage, S.op_batch, elem),
                       flops=cases.op_flops(op, mode, stage, S.op_batch),
                       saved_bytes=saved, rel_err=err, backend=resnet_fast.get_backend())
        harness.run_timed(benchmark, step, S, rounds=S.op_rounds, warmup=S.op_warmup, inner=inner)
    del case, step
    harness.release(S.device)


@pytest.mark.parametrize("stage", [pytest.param(s, id=_stage_id(s)) for s in S.stages])
def test_copy(benchmark, stage):
    """Device copy of one wide activation (y.copy_(x)): the bytes-moved ceiling for the ops."""
    shape, _ = cases.op_shapes("bn_relu", stage, S.op_batch)
    benchmark.group = f"copy {'x'.join(map(str, shape))}"
    x = torch.randn(shape, device=S.device, dtype=S.act_dtype).contiguous(memory_format=S.memory_format)
    y = torch.empty_like(x)
    step = lambda: y.copy_(x)  # noqa: E731
    elem = torch.finfo(S.act_dtype).bits // 8
    harness.record(benchmark, kind="op", op="copy", mode="copy", contender="copy", shape=list(shape),
                   stage=_stage_id(stage), bytes=2 * x.numel() * elem, flops=0, saved_bytes=None, rel_err=0.0)
    harness.run_timed(benchmark, step, S, rounds=S.op_rounds, warmup=S.op_warmup,
                      inner=harness.calibrate_inner(step, S))
    assert torch.equal(x, y)
