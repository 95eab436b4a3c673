"""One resnet50 training step (batch 16, 224x224, fp32, channels_last, 2 threads) under torch.profiler,
after three warm-up steps: `python profile_step.py eager|rf` (PYTHONPATH=repository root).
Run with GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736 to take
page faults out (see README.md)."""
import sys

import torch
import torchvision

import resnet_fast

torch.manual_seed(0)
torch.set_num_threads(2)
x = torch.randn(16, 3, 224, 224).to(memory_format=torch.channels_last)
t = torch.randint(0, 1000, (16,))
m = (torchvision.models.resnet50() if sys.argv[1] == "eager" else resnet_fast.resnet50()).to(
    memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)


def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), t).backward()
    opt.step()


for _ in range(3):
    step()
with torch.profiler.profile() as p:
    step()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=16))
