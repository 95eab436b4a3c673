"""Host time of one forward+backward where the kernels cost next to nothing: what the op layer costs.

At 8x64x2x2 (fp32, channels_last) every kernel touches 8 KB, so the time is the host's: Python,
autograd, the dispatcher. On a GPU this is the floor of a layer's time at small batches. Eager
(resnet_fast.ops.reference, torchvision's composition) and resnet_fast on one backend are timed
in alternation, round by round, each round the median of CALLS calls; the table gives the
median over rounds and the median of the per-round ratios.

    PYTHONPATH=. python benchmarks/host_time.py [--backend cpu] [--rounds 7] [--calls 300] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import resnet_fast
from resnet_fast import ops
from resnet_fast.ops import reference

C = 64


def _case(op: str):
    def activation():
        return torch.randn(8, C, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()

    x, identity = activation(), activation()
    weight, bias = (torch.rand(C) + 0.5).requires_grad_(), torch.randn(C).requires_grad_()
    running_mean, running_var, num_batches = torch.zeros(C), torch.ones(C), torch.zeros((), dtype=torch.long)
    grad = torch.randn_like(x)

    def forward_backward(module):
        bn = (weight, bias, running_mean, running_var)
        if op == "bn_relu":
            out = module.bn_relu(x, *bn, training=True, num_batches_tracked=num_batches)
            torch.autograd.grad(out, [x, weight, bias], grad)
        else:
            out = module.bn_add_relu(x, *bn, identity, training=True, num_batches_tracked=num_batches)
            torch.autograd.grad(out, [x, weight, bias, identity], grad)

    return forward_backward


def median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: the kernels are trivial here, and on a shared machine "
                             "waking OpenMP workers adds noise that is not host time)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    resnet_fast.set_backend(args.backend)
    print(f"| op (8x64x2x2 fp32 channels_last, fwd+bwd) | eager us | resnet_fast ({args.backend}) us "
          f"| resnet_fast / eager |")
    print("|---|---|---|---|")
    for op in ("bn_relu", "bn_add_relu"):
        fn = _case(op)
        for module in (reference, ops):  # warm-up
            for _ in range(50):
                fn(module)
        eager, fused = [], []
        for _ in range(args.rounds):
            eager.append(median_us(lambda: fn(reference), args.calls))
            fused.append(median_us(lambda: fn(ops), args.calls))
        ratio = statistics.median(f / e for f, e in zip(fused, eager))
        print(f"| {op} | {statistics.median(eager):.0f} | {statistics.median(fused):.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
