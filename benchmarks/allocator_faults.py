"""Page faults and time per training step under one memory allocator setting.

glibc's malloc serves large blocks (above its mmap threshold) with fresh pages and gives
them back on free, so every step faults its large activations in again (the kernel
zero-fills each 4 KiB page). This script measures that for whatever allocator the process
runs with, so the settings are compared one process each:

    python benchmarks/allocator_faults.py --label default
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 \\
        python benchmarks/allocator_faults.py --label glibc-no-mmap
    LD_PRELOAD=/path/libjemalloc.so.2 MALLOC_CONF=oversize_threshold:1,background_thread:true,metadata_thp:auto \\
        python benchmarks/allocator_faults.py --label jemalloc-run_cpu

(the last line is what ``python -m torch.backends.xeon.run_cpu --enable-jemalloc`` sets up);
``allocator_faults.sh`` runs every setting docs/performance.md compares.

Prints one JSON line: minor page faults and seconds per step (median of the timed steps).

Plain torchvision resnet50, fp32, channels_last, SGD: the allocator's effect on every tensor.
Use batch 16 (the default): below batch ~11 the largest activations fit under glibc's largest
dynamic mmap threshold (32 MiB) and the faults mostly vanish after a few steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
import torchvision


def resnet50_step(batch: int, size: int):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    step_fn = resnet50_step(args.batch, args.size)
    faults, times = [], []
    for step in range(args.warmup + args.steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step_fn()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({
        "label": args.label, "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""), "MALLOC_CONF": os.environ.get("MALLOC_CONF", ""),
        "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "minor_faults_per_step": statistics.median(faults), "s_per_step": round(statistics.median(times), 3),
        "faults": faults, "times": [round(t, 3) for t in times],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
