"""Micro-benchmark of the C++ CPU kernels against the torch reference (resnet_fast.ops.primitives).

Times bn_stats and scale_shift_act (relu; without and with a residual) on a ResNet-50
stage-1 activation, (32, 256, 56, 56) float32, contiguous and channels_last, with 2 threads,
and prints the median time and the effective bandwidth: the bytes the op must move / time
(bn_stats reads y; scale_shift_act reads y (+ residual) and writes out). For scale, one
ATen op moving the same bytes (y.sum(), torch.relu(y), torch.add(y, residual)) is timed too:
about the best an allocating op can do on this machine.

    python benchmarks/cpu_primitives_micro.py [--shape 32 256 56 56] [--threads 2] [--min-run-time 1]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.utils.benchmark as benchmark

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import resnet_fast  # noqa: E402,F401  (registers torch.ops.resnet_fast)
from resnet_fast import _extension  # noqa: E402
from resnet_fast.ops import primitives  # noqa: E402


def cases(y: torch.Tensor):
    """(label, {implementation: (fn, args)}, bytes moved) for one input layout."""
    n, c = y.shape[:2]
    scale, shift = torch.randn(n, c), torch.randn(n, c)
    residual = torch.randn_like(y)
    act = y.numel() * y.element_size()
    ssa = (y, scale, shift, None, None, None, True)
    ssa_res = (y, scale, shift, residual, None, None, True)
    return [
        ("bn_stats", {"cpu": (torch.ops.resnet_fast.bn_stats, (y,)), "reference": (primitives.bn_stats, (y,)),
                      "aten sum": (torch.sum, (y,))}, act),
        ("scale_shift_act", {"cpu": (torch.ops.resnet_fast.scale_shift_act, ssa),
                             "reference": (primitives.scale_shift_act, ssa), "aten relu": (torch.relu, (y,))},
         2 * act),
        ("scale_shift_act+res", {"cpu": (torch.ops.resnet_fast.scale_shift_act, ssa_res),
                                 "reference": (primitives.scale_shift_act, ssa_res),
                                 "aten add": (torch.add, (y, residual))}, 3 * act),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[32, 256, 56, 56])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    if not _extension.status["loaded"]:
        sys.exit(f"the C++ kernels are not loaded: {_extension.status['error']}")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, shape {tuple(args.shape)} float32, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'op':<22}{'layout':<15}{'impl':<11}{'median ms':>10}{'GB/s':>8}{'vs reference':>14}")
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        y = torch.randn(*args.shape).contiguous(memory_format=fmt)
        for op, impls, nbytes in cases(y):
            medians = {}
            for impl, (fn, fn_args) in impls.items():
                timer = benchmark.Timer(stmt="fn(*a)", globals={"fn": fn, "a": fn_args}, num_threads=args.threads)
                medians[impl] = timer.blocked_autorange(min_run_time=args.min_run_time).median
            for impl, t in medians.items():
                ratio = "" if impl == "reference" else f"{medians['reference'] / t:.2f}x"
                print(f"{op:<22}{fmt_name:<15}{impl:<11}{t * 1e3:>10.2f}{nbytes / t / 1e9:>8.1f}{ratio:>14}")


if __name__ == "__main__":
    main()
