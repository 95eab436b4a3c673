"""bn_relu / bn_add_relu forward+backward, resnet_fast `cpu` against eager, in one process: fp32,
batch 8, 2 threads, at the ResNet-50 stage shapes, contiguous (NCHW) or channels_last. Each of
ROUNDS rounds times every contender for >= 30 ms of calls, in a rotating order; the table gives
medians over rounds (us per forward+backward) and the median per-round ratio eager / ours.

    PYTHONPATH=. python benchmarks/results/cpu-2026-12-02-nchw/ops_fwdbwd.py {nc|cl} [ROUNDS]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from resnet_fast import _extension
from resnet_fast.ops import bn_add_relu, bn_relu

torch.set_num_threads(2)
FORMAT = {"nc": torch.contiguous_format, "cl": torch.channels_last}[sys.argv[1]]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))


def contenders(C, H):
    torch.manual_seed(0)
    x = torch.randn(8, C, H, H).contiguous(memory_format=FORMAT).requires_grad_()
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
    return {"bn_relu eager": step(lambda: F.relu(F.batch_norm(x, *bn))),
            "bn_relu ours": step(lambda: bn_relu(x, *ours, training=True)),
            "bn_add_relu eager": step(lambda: F.relu(F.batch_norm(x, *bn) + identity)),
            "bn_add_relu ours": step(lambda: bn_add_relu(x, *ours, identity, training=True))}


def main():
    print(f"torch {torch.__version__}, C++ CPU kernels {_extension.cpu_kernels()}, {sys.argv[1]}, {ROUNDS} rounds; "
          "times in us")
    print("| shape | op | eager | resnet_fast | eager / resnet_fast (per round) |")
    print("|---|---|---:|---:|---:|")
    for C, H in STAGES:
        runs = contenders(C, H)
        names = list(runs)
        times = {name: [] for name in names}
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn = runs[name]
                fn()
                start, calls = time.perf_counter(), 0
                while time.perf_counter() - start < 0.03:
                    fn()
                    calls += 1
                times[name].append((time.perf_counter() - start) / calls * 1e6)
        for op in ("bn_relu", "bn_add_relu"):
            eager, ours = times[f"{op} eager"], times[f"{op} ours"]
            ratio = statistics.median(a / b for a, b in zip(eager, ours))
            print(f"| 8x{C}x{H}x{H} | {op} | {statistics.median(eager):.0f} | {statistics.median(ours):.0f} | "
                  f"{ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
