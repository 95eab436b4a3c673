"""Timing, correctness checks and bookkeeping shared by test_ops.py and test_models.py."""
from __future__ import annotations

import contextlib
import gc
import math
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

import bench_config as config

Tensor = torch.Tensor

# Relative error ||out - ref|| / ||ref|| allowed against eager. fp32: different but exact
# summation orders (Welford vs two-pass statistics, BN folded into the conv weight in
# eval) stay far under 1e-4 on these sizes. bf16: one rounding of the output alone is
# ~4e-3 relative; 3e-2 leaves room for the statistics computed from bf16 inputs and for
# models, whose 50 layers compound it.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 3e-2}
# Rounds are at least this long. GPU: one synchronize per round, not per call. CPU: a
# sub-millisecond op (the 14x14 and 7x7 stages) timed one call per round gives a median of a
# handful of single calls, which this machine's scheduling noise moves by +-50 %.
MIN_ROUND_S = {"cuda": 2e-3, "cpu": 20e-3}
MAX_INNER = 200


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(settings: config.Settings):
    """bf16 autocast on GPU (the model-level recipe); nothing on CPU (fp32)."""
    if settings.cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rel_err(out: Tensor, ref: Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        return math.inf
    denom = ref.norm().item()
    err = (out - ref).norm().item()
    return err / denom if denom > 0 else err


def max_rel_err(outs: Iterable[Optional[Tensor]], refs: Iterable[Optional[Tensor]]) -> float:
    errors = [rel_err(o, r) for o, r in zip(outs, refs) if o is not None and r is not None]
    return max(errors) if errors else 0.0


def check_close(err: float, dtype: torch.dtype, what: str, settings: config.Settings) -> None:
    """Assert in smoke mode (CI), where the point is that contenders compute what eager does."""
    tol = TOLERANCE[dtype]
    if settings.smoke:
        assert err <= tol, f"{what}: relative error {err:.3g} against eager exceeds {tol:g}"


# Model level (smoke): a contender's error against an fp64 run of the eager model may be at
# most FP64_FACTOR times eager's own error against it, plus a floor. Training-mode BN on
# batch 2 is ill-conditioned: eager fp32 itself is off fp64 by up to a few % on some
# gradients of resnext50 / resnetv2 at 64x64, and which tensors suffer depends on rounding
# details (torch.compile's fp32 preact_resnet50 was seen 100x worse than eager on one
# tensor where eager happened to be good, 1e-2 overall like eager). So the bound is eager's
# worst error over all outputs and gradients: it still fails a wrong gradient (errors ~1)
# and stays tight (~1e-5) for the well-conditioned models.
FP64_FACTOR = 3.0
FP64_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def check_against_fp64(mine: dict, eager: dict, exact: dict, dtype: torch.dtype, what: str) -> float:
    """Assert err(mine[k]) <= FP64_FACTOR * max_k err(eager[k]) + floor for every output/gradient k
    (errors against ``exact``). Returns max_k err(mine[k]) / max_k err(eager[k]), for the record."""
    e_eager = max(rel_err(eager[k], ref) for k, ref in exact.items())
    bound = FP64_FACTOR * e_eager + FP64_FLOOR[dtype]
    e_mine = {k: rel_err(mine[k], ref) for k, ref in exact.items()}
    worst = max(e_mine, key=e_mine.get)
    assert e_mine[worst] <= bound, (f"{what}: {worst}: error against fp64 {e_mine[worst]:.3g} exceeds "
                                    f"{FP64_FACTOR:g} x eager's worst {e_eager:.3g} + {FP64_FLOOR[dtype]:g}")
    return e_mine[worst] / max(e_eager, 1e-30)


def calibrate_inner(fn: Callable[[], object], settings: config.Settings) -> int:
    """Calls per timed round: enough that a round lasts MIN_ROUND_S (1 in smoke runs)."""
    if settings.smoke:
        return 1
    fn()
    sync(settings.device)
    start = time.perf_counter()
    for _ in range(3):
        fn()
    sync(settings.device)
    per_call = (time.perf_counter() - start) / 3
    min_round_s = MIN_ROUND_S["cuda" if settings.cuda else "cpu"]
    return max(1, min(MAX_INNER, math.ceil(min_round_s / max(per_call, 1e-7))))


def run_timed(benchmark, fn: Callable[[], object], settings: config.Settings, *, rounds: int, warmup: int,
              inner: int = 1) -> None:
    """Time ``fn`` with pytest-benchmark: ``rounds`` rounds of ``inner`` calls after ``warmup`` rounds.

    The target synchronizes the GPU after the last call of each round, so a round's time
    covers all the device work it launched; pytest-benchmark divides by ``inner``
    (its ``iterations``), so the stats are per call. On GPU the peak memory allocated
    while timing is recorded in ``extra_info["peak_mem_bytes"]``.
    """
    calls = [0]

    def target():
        fn()
        calls[0] += 1
        if calls[0] % inner == 0:
            sync(settings.device)

    gc.collect()
    if settings.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup, iterations=inner)
    sync(settings.device)
    benchmark.extra_info["inner_calls"] = inner
    if settings.cuda:
        benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated()


def interleave(steps: dict, rounds: int, warmup: int, device: str, *, inner: Optional[dict] = None,
               before: Callable[[str], None] = lambda contender: None) -> dict:
    """Seconds per call of every contender's step, round by round: each round runs every step
    ``inner[contender]`` times (default 1), in an order that rotates from round to round, so a
    machine that drifts (shared CPU, process state) weighs on all contenders alike.
    ``before(contender)`` runs untimed ahead of each (selects its backend)."""
    contenders = list(steps)
    inner = inner or {}
    times = {c: [] for c in contenders}
    for r in range(warmup + rounds):
        for contender in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            before(contender)
            calls = inner.get(contender, 1)
            sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                steps[contender]()
            sync(device)
            if r >= warmup:
                times[contender].append((time.perf_counter() - start) / calls)
    return times


def record(benchmark, **info) -> None:
    benchmark.extra_info.update(config.environment())
    benchmark.extra_info.update(info)


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- torch.compile
_compiled: dict = {}


def compiled(fn: Callable, contender: str) -> Callable:
    """``torch.compile(fn, mode=...)``, one per (function, mode) so each shape compiles once
    and the fwd/bwd/fwdbwd tests of a shape share one compiled graph."""
    key = (fn, contender)
    if key not in _compiled:
        _compiled[key] = config.compile_fn(fn, contender)
    return _compiled[key]


def op_function(op: str, contender: str) -> Callable:
    """The function a contender calls for ``op``: eager's composition, torch.compile of it, or
    resnet_fast's op (whose backend the caller selects)."""
    from resnet_fast import ops
    from resnet_fast.ops import reference

    if contender == "eager":
        return getattr(reference, op)
    if contender in config.COMPILE_MODES:
        return compiled(getattr(reference, op), contender)
    return getattr(ops, op)


def configure_dynamo() -> None:
    """Every (op, shape, mode) is its own graph: allow that many recompiles of one function."""
    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 4096))


def model_step(model: torch.nn.Module, x: Tensor, labels: Tensor, mode: str,
               settings: config.Settings) -> Callable[[], object]:
    """One timed unit at model level: "train" = forward, cross-entropy, backward, SGD(momentum)
    step, zero_grad; "infer" = a no_grad forward. Autocast as ``autocast(settings)``."""
    if mode == "infer":
        def run():
            with torch.no_grad(), autocast(settings):
                return model(x)
        return run
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def run():
        with autocast(settings):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run
