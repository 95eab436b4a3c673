"""resnet50 training step (SGD-free: forward, cross-entropy, backward), torchvision eager against
resnet_fast with the same weights, in one process, 2 threads, fp32, contiguous (nc) or
channels_last (cl) model and input. One step of each per round, the order alternating; the
first round is warm-up. Prints medians over rounds and the median per-round ratio eager / ours.

    PYTHONPATH=. python benchmarks/results/cpu-2026-12-02-nchw/resnet50_train.py {nc|cl} ROUNDS BATCH
"""
import statistics
import sys
import time

import torch
import torchvision

import resnet_fast

torch.set_num_threads(2)
fmt = torch.channels_last if sys.argv[1] == "cl" else torch.contiguous_format
rounds, batch = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
eager = torchvision.models.resnet50()
ours = resnet_fast.resnet50()
ours.load_state_dict(eager.state_dict())
eager, ours = eager.to(memory_format=fmt), ours.to(memory_format=fmt)
x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
target = torch.randint(0, 1000, (batch,))
def step(m):
    m.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), target).backward()
times = {"eager": [], "ours": []}
for r in range(rounds + 1):
    for name, m in ((("eager", eager), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("eager", eager))):
        t = time.perf_counter(); step(m); el = time.perf_counter() - t
        if r: times[name].append(el)
med = {k: statistics.median(v) for k, v in times.items()}
ratio = statistics.median(a / b for a, b in zip(times["eager"], times["ours"]))
print(f"resnet50 train {sys.argv[1]} batch {batch}: eager {med['eager']*1e3:.0f} ms, ours {med['ours']*1e3:.0f} ms, per-round ratio {ratio:.2f}x")
