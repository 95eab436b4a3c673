"""Host time of one forward+backward at a shape where the kernels cost nothing (8x64x2x2, fp32,
channels_last, 2 threads): eager, resnet_fast (direct eager call), and resnet_fast through
torch's custom-op dispatch (the path every call took before the direct call). Median of 500
calls after 50 warm-up calls; the first of the two repetitions warms the process up.

    PYTHONPATH=. python benchmarks/results/cpu-2026-12-02-direct-call/host_overhead.py
"""
import time

import torch

from resnet_fast import ops
from resnet_fast.ops import _direct_call, reference

torch.set_num_threads(2)
C = 64


def activation():
    return torch.randn(8, C, 2, 2).contiguous(memory_format=torch.channels_last).requires_grad_()


x, identity = activation(), activation()
weight, bias = (torch.rand(C) + 0.5).requires_grad_(), torch.randn(C).requires_grad_()
running_mean, running_var, num_batches = torch.zeros(C), torch.ones(C), torch.zeros((), dtype=torch.long)
grad = torch.randn_like(x)


def forward_backward(module, op):
    bn = (weight, bias, running_mean, running_var)
    if op == "bn_relu":
        out = module.bn_relu(x, *bn, training=True, num_batches_tracked=num_batches)
        torch.autograd.grad(out, [x, weight, bias], grad)
    else:
        out = module.bn_add_relu(x, *bn, identity, training=True, num_batches_tracked=num_batches)
        torch.autograd.grad(out, [x, weight, bias, identity], grad)


def median_us(fn, calls=500):
    for _ in range(50):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2] * 1e6


for op in ("bn_relu", "bn_add_relu"):
    for _ in range(2):
        eager = median_us(lambda: forward_backward(reference, op))
        direct = median_us(lambda: forward_backward(ops, op))
        with _direct_call.through_dispatcher():
            dispatched = median_us(lambda: forward_backward(ops, op))
        print(f"{op}: eager {eager:.0f} us, resnet_fast direct {direct:.0f} us, "
              f"through the dispatcher {dispatched:.0f} us")
