"""The AVX-512 and AVX2 builds of the C++ CPU kernels against each other, and against eager, in
one process: bn_relu and bn_add_relu forward+backward (fp32, channels_last, batch 8, 2 threads)
at the ResNet-50 stage shapes. The builds give the same results bit for bit, so
``torch.ops.resnet_fast.cpu_use_kernels`` switches between them between timed calls. Each of
ROUNDS rounds times every contender for >= 30 ms of calls, in a rotating order; the table
gives medians over rounds and the median per-round ratio AVX2 time / AVX-512 time.

    PYTHONPATH=. python benchmarks/results/cpu-2026-12-02-avx512/ab_kernels.py [ROUNDS]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resnet_fast import _extension
from resnet_fast.ops import bn_add_relu, bn_relu

torch.set_num_threads(2)
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 12
STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))
OPS = torch.ops.resnet_fast


def contenders(C, H):
    x = torch.randn(8, C, H, H).contiguous(memory_format=torch.channels_last).requires_grad_()
    identity = torch.randn_like(x).requires_grad_()
    weight, bias = (torch.rand(C) + 0.5).requires_grad_(), (torch.randn(C) * 0.1).requires_grad_()
    running_mean, running_var, grad = torch.zeros(C), torch.ones(C), torch.randn_like(x)

    def step(fn):
        def run():
            x.grad = identity.grad = weight.grad = bias.grad = None
            fn().backward(grad)
        return run

    bn = (running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    ours = (weight, bias, running_mean, running_var)
    eager_relu = step(lambda: F.relu(F.batch_norm(x, *bn)))
    eager_add = step(lambda: F.relu(F.batch_norm(x, *bn) + identity))
    relu = step(lambda: bn_relu(x, *ours, training=True))
    add = step(lambda: bn_add_relu(x, *ours, identity, training=True))
    return [("bn_relu eager", None, eager_relu), ("bn_relu avx2", "avx2", relu), ("bn_relu avx512", "avx512", relu),
            ("bn_add_relu eager", None, eager_add), ("bn_add_relu avx2", "avx2", add),
            ("bn_add_relu avx512", "avx512", add)]


def main():
    default = _extension.cpu_kernels()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"default kernels {default}, {ROUNDS} rounds; times in us")
    print("| shape | op | eager | avx2 | avx512 | avx2 / avx512 (per round) | vs eager: avx2 / avx512 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    try:
        for C, H in STAGES:
            runs = contenders(C, H)
            times = {name: [] for name, _, _ in runs}
            for r in range(ROUNDS):
                for name, isa, fn in runs[r % len(runs):] + runs[:r % len(runs)]:
                    if isa:
                        OPS.cpu_use_kernels(isa)
                    fn()
                    start, calls = time.perf_counter(), 0
                    while time.perf_counter() - start < 0.03:
                        fn()
                        calls += 1
                    times[name].append((time.perf_counter() - start) / calls * 1e6)
            for op in ("bn_relu", "bn_add_relu"):
                eager, avx2, avx512 = (times[f"{op} {k}"] for k in ("eager", "avx2", "avx512"))
                med = [statistics.median(t) for t in (eager, avx2, avx512)]
                paired = statistics.median(a / b for a, b in zip(avx2, avx512))
                print(f"| 8x{C}x{H}x{H} | {op} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {paired:.3f} | "
                      f"{med[0] / med[1]:.2f}x / {med[0] / med[2]:.2f}x |")
    finally:
        OPS.cpu_use_kernels(default)


if __name__ == "__main__":
    main()
