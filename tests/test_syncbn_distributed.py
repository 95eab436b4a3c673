"""SyncBatchNorm across two processes (gloo, CPU): the models pass the process group to the ops.

Two ranks each run half of a batch through a SyncBatchNorm-converted fused model; the
result must be that of eager BatchNorm on the whole batch in one process: each half's
output, the running statistics, and the sum over ranks of the parameter gradients
(SyncBN's backward all-reduces the statistics' gradients, not the parameters').
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.models.resnet as tv_resnet

import _spawn
import resnet_fast
from model_utils import assert_close, build_pair, make_input, reference_backend  # noqa: F401
from resnet_fast.models import ResNet, blocks

pytestmark = pytest.mark.slow

WORLD = 2


def _models():
    return build_pair(lambda: ResNet(blocks.Bottleneck, [1, 1, 1, 1], num_classes=5),
                      lambda: tv_resnet.ResNet(tv_resnet.Bottleneck, [1, 1, 1, 1], num_classes=5))


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    resnet_fast.set_backend("reference")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        model, _ = _models()
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
        x, grad = torch.load(f"{tmp}/inputs.pt")
        half = slice(rank * x.shape[0] // WORLD, (rank + 1) * x.shape[0] // WORLD)
        out = model(x[half])
        out.backward(grad[half])
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save({"out": out.detach(), "grads": grads, "buffers": dict(model.named_buffers())},
                   f"{tmp}/rank{rank}.pt")
    finally:
        _spawn.leave_group()


def test_two_process_sync_batchnorm_equals_full_batch_batchnorm(tmp_path):
    x = make_input((4, 3, 48, 48))
    grad = torch.randn(4, 5, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    torch.save((x, grad), tmp_path / "inputs.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)

    _, ref = _models()
    ref.train()
    out = ref(x)
    out.backward(grad)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), "output")
    for name, param in ref.named_parameters():
        assert_close(ranks[0]["grads"][name] + ranks[1]["grads"][name], param.grad, f"gradient of {name}")
    for name, buffer in ref.named_buffers():
        for r in ranks:
            if buffer.is_floating_point():
                assert_close(r["buffers"][name], buffer, name)
            else:
                assert torch.equal(r["buffers"][name], buffer), name
