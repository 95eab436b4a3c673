"""Host time per Triton primitive call with the kernel launch stubbed out: what the Python around a launch costs.

Method (no GPU needed, and none used). The launchers run their GPU path, not the interpreter's:
  * TRITON_INTERPRET is unset, so the kernels are real ``JITFunction``s and ``triton.jit``'s own launch
    path runs (argument binding, specialization, cache key, compiled-kernel lookup);
  * a fake-target driver (tests/_cubin.py's ``FakeTargetDriver``, sm_90 by default) is Triton's active
    driver: the first call of each kernel variant compiles a real cubin (seconds; Triton's cache keeps it);
  * ``CompiledKernel._init_handles`` is replaced so that a compiled kernel's launcher (``kernel.run``, the C
    function that marshals the arguments and calls cuLaunchKernel) is a Python no-op: the one thing
    not timed;
  * CPU tensors stand in for CUDA tensors: ``_common.CPU_STANDS_IN_FOR_CUDA = True`` makes the launchers
    accept them and plan as for a GPU (tiles, H*W splits and grids of the GPU path).
Each primitive is called with ResNet-50-like arguments (32 x 256 x 14 x 14 bfloat16, channels_last, a
batch-normalized residual, relu, the residual's sums and gradients) CALLS times after a warm-up; a call's
time is its perf_counter interval, the row gives the median over calls, the table the median over ROUNDS.

What a GPU adds and this does not time: the C launcher (a few us per launch), the device guard for a
tensor on another device than the current one, and the CUDA caching allocator instead of the CPU one for
the outputs (both a few hundred ns to ~2 us per tensor). On this 2-core shared machine the numbers move by
~10 % between runs: compare runs of one session.

    PYTHONPATH=. python benchmarks/triton_host_time.py [--calls 2000] [--rounds 5] [--arch 90] [--layout nhwc]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("triton_host_time: unset TRITON_INTERPRET (this times the GPU launch path, with launches stubbed)")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


def _no_launch(*args):
    """The stubbed launcher: what CompiledKernel.run would be (grid, stream, function, metadata, args...)."""
    return None


def _stub_init_handles(self):
    # Instead of loading the cubin on a device and building the C launcher: a no-op launcher.
    if self._run is None:
        self._run = _no_launch
        self.function = 0
        self.n_regs, self.n_spills, self.n_max_threads = 0, 0, 1024


def setup(arch: int) -> None:
    import _cubin
    from triton.compiler import compiler

    _cubin.activate(arch)
    compiler.CompiledKernel._init_handles = _stub_init_handles
    from resnet_fast.kernels.triton import _common

    _common.CPU_STANDS_IN_FOR_CUDA = True


def cases(layout: str):
    """(primitive name, zero-argument call) with ResNet-50-like arguments."""
    from resnet_fast.kernels import triton as kernels

    n, c, h = 32, 256, 14
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)

    def act():
        return torch.randn(n, c, h, h, generator=g).to(torch.bfloat16).contiguous(memory_format=fmt)

    y, res, dout = act(), act(), act()
    nc = torch.rand(n, c, generator=g) + 0.5
    ch = torch.rand(c, generator=g) + 0.5
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    mean, var = ch.clone(), ch.clone()
    return [
        ("bn_stats", lambda: kernels.bn_stats(y)),
        ("bn_finalize", lambda: kernels.bn_finalize(mean, var, weight, bias, 1e-5, n * h * h, n)),
        ("scale_shift_act", lambda: kernels.scale_shift_act(y, nc, nc, res, ch, ch, True)),
        ("scale_shift_act_backward_reduce", lambda: kernels.scale_shift_act_backward_reduce(
            dout, y, nc, nc, res, ch, ch, True, ch, ch)),
        ("bn_backward_finalize", lambda: kernels.bn_backward_finalize(nc, nc, ch, weight, n * h * h, n, True)),
        ("scale_shift_act_backward_apply", lambda: kernels.scale_shift_act_backward_apply(
            dout, y, nc, nc, res, ch, ch, True, nc, nc, ch, ch, ch, ch, ch, ch)),
    ]


def median_us(fn, calls: int) -> float:
    times = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    parser.add_argument("--only", nargs="*", help="primitives to time (default: all six)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    setup(args.arch)
    rows = [(name, fn) for name, fn in cases(args.layout) if not args.only or name in args.only]
    for _, fn in rows:  # compile (first call) and warm up
        for _ in range(200):
            fn()
    results = {name: [] for name, _ in rows}
    for _ in range(args.rounds):
        for name, fn in rows:
            results[name].append(median_us(fn, args.calls))
    print(f"| primitive (32x256x14x14 bf16 {args.layout}, launch stubbed, sm_{args.arch}) | host us per call |")
    print("|---|---|")
    for name, times in results.items():
        print(f"| {name} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()
