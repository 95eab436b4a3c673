"""Multi-process training through torch.distributed: setup from torchrun's environment, SyncBN, reductions.

Launch: ``torchrun --nproc_per_node N -m resnet_fast.train ...``. torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the process group is NCCL on GPUs,
gloo on CPU. ``--batch-size`` is per process.

``--sync-bn``: ``nn.SyncBatchNorm.convert_sync_batchnorm`` before DDP. The fused models
see ``nn.SyncBatchNorm`` modules and hand the process group's name to the fused ops,
which all-gather per-rank (count, mean, var) and all-reduce the backward sums. Eager
modules on CPU, where ``nn.SyncBatchNorm`` refuses to synchronize, run the same fused op
(``resnet_fast.ops.bn_relu`` without ReLU) through ``SyncBatchNormCPU``.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

import resnet_fast


@dataclass
class Context:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Context:
    """Join the process group torchrun describes (if any) and pick this process's device.

    ``device``: "auto" (a GPU when there is one, else CPU), "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                device_id=chosen if use_cuda else None)
    return Context(rank, local_rank, world, chosen)


def teardown() -> None:
    """Leave the process group, every rank together, and free it before the interpreter exits.

    A gloo worker thread that drops its last finished work item while Python is finalizing
    aborts the process ("terminate called without an active exception", seen with
    torch 2.14 in about 1 run of 30): the barrier lets every rank finish, and the collection
    destroys the group, joining its threads, while Python is still fully alive.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


class SyncBatchNormCPU(nn.SyncBatchNorm):
    """nn.SyncBatchNorm that also synchronizes CPU tensors, through the fused ``bn_relu`` op (relu=False).

    Same parameters, buffers and state_dict; GPU tensors, eval mode and single-process
    runs take nn.SyncBatchNorm's own path.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if not (self.training and input.device.type == "cpu" and input.dim() == 4
                and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        tracked = self.track_running_stats
        return resnet_fast.ops.bn_relu(
            input, self.weight, self.bias, self.running_mean if tracked else None,
            self.running_var if tracked else None, training=True, momentum=self.momentum, eps=self.eps,
            relu=False, num_batches_tracked=self.num_batches_tracked if tracked else None,
            group_name=group.group_name)


class DistributedDataParallel(nn.parallel.DistributedDataParallel):
    """DDP that also takes SyncBatchNorm layers in a CPU model.

    torch refuses them ("SyncBatchNorm layers only work with GPU modules") because its own
    SyncBN kernels are GPU-only; the fused ops and ``SyncBatchNormCPU`` synchronize CPU tensors.
    """

    def _passing_sync_batchnorm_handle(self, module):
        if self.device_type != "cpu":
            super()._passing_sync_batchnorm_handle(module)


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` in DDP when there are several processes (gradients averaged over the ranks)."""
    if not ctx.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm``, with CPU synchronization (``SyncBatchNormCPU``)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.SyncBatchNorm:
            module.__class__ = SyncBatchNormCPU  # adds no state: only forward differs
    return model


def all_reduce_sums(values: list[float], ctx: Context) -> list[float]:
    """Sums over the ranks (float64 on the process's device), as Python floats."""
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj, ctx: Context) -> list:
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
