"""A/B of the NCHW plane groups (csrc/cpu/vec.h run_plane_groups) in one process.

Runs against a build of the tree with ab_switch.patch applied (not committed): there the groups
are used only while the environment variable RF_EXP is set, which this script toggles between
timed calls. Both variants give the same results bit for bit (checked here on every shape).
bn_relu / bn_add_relu forward+backward, fp32, contiguous, batch 8, 2 threads; then bn_stats alone.
Each of ROUNDS rounds times both variants for >= 30 ms of calls (20 ms for bn_stats), the
order alternating; medians over rounds (us) and the median per-round ratio without / with.

    git worktree add /tmp/ab 4527466 && cd /tmp/ab && git apply $REPO/benchmarks/results/cpu-2026-12-02-nchw/ab_switch.patch
    PYTHONPATH=. python ab_grouping.py [ROUNDS] [CxH,...]
"""
import os
import statistics
import sys
import time

import torch

from resnet_fast.ops import bn_add_relu, bn_relu

torch.set_num_threads(2)
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 16
STAGES = ([tuple(map(int, s.split("x"))) for s in sys.argv[2].split(",")] if len(sys.argv) > 2
          else [(2048, 7), (1024, 14)])


def use_groups(on):
    if on:
        os.environ["RF_EXP"] = "1"
    else:
        os.environ.pop("RF_EXP", None)


def ab(label, step, min_time):
    use_groups(False)
    base = step()
    use_groups(True)
    same = all(torch.equal(a, b) for a, b in zip(base, step()))
    times = {False: [], True: []}
    for r in range(ROUNDS):
        for on in ((False, True) if r % 2 else (True, False)):
            use_groups(on)
            step()
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < min_time:
                step()
                calls += 1
            times[on].append((time.perf_counter() - start) / calls * 1e6)
    ratio = statistics.median(a / b for a, b in zip(times[False], times[True]))
    print(f"| {label} | {'yes' if same else 'NO'} | {statistics.median(times[False]):.0f} | "
          f"{statistics.median(times[True]):.0f} | {ratio:.2f} |", flush=True)


def main():
    print("| case | bitwise same | without groups (us) | with groups (us) | without / with (per round) |")
    print("|---|---|---:|---:|---:|")
    for C, H in STAGES:
        x = torch.randn(8, C, H, H).requires_grad_()
        identity = torch.randn_like(x).requires_grad_()
        weight, bias = (torch.rand(C) + 0.5).requires_grad_(), (torch.randn(C) * 0.1).requires_grad_()
        rm, rv, grad = torch.zeros(C), torch.ones(C), torch.randn_like(x)
        for name, fn in (("bn_relu", lambda: bn_relu(x, weight, bias, rm, rv, training=True)),
                         ("bn_add_relu", lambda: bn_add_relu(x, weight, bias, rm, rv, identity, training=True))):
            def step():
                x.grad = identity.grad = weight.grad = bias.grad = None
                out = fn()
                out.backward(grad)
                return [out, x.grad, weight.grad, bias.grad] + ([identity.grad] if identity.grad is not None else [])
            ab(f"8x{C}x{H}x{H} {name} fwd+bwd", step, 0.03)
        y = torch.randn(8, C, H, H) + 3
        ab(f"8x{C}x{H}x{H} bn_stats", lambda: list(torch.ops.resnet_fast.bn_stats(y)), 0.02)


if __name__ == "__main__":
    main()
