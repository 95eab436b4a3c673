"""Synchronized BatchNorm across 2 gloo processes equals one process with the whole batch.

Three levels, each comparing running statistics and gradients:
  op     resnet_fast.ops.bn_relu(..., group_name=...): the fused SyncBN path itself
  model  every tested --arch, SyncBN-converted and in DDP, half the batch per process
  CLI    resnet_fast.train.main under torchrun's environment vs one process with twice the batch
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import _spawn
from resnet_fast.training import distributed
from resnet_fast.training.models import available_archs, build_model

pytestmark = pytest.mark.timeout(600)

# float32 sums in another order (per-rank partial sums, then the all-reduce): ~1e-6 relative.
OP_TOL = dict(rtol=1e-5, atol=1e-6)
# Models run in float64: at 32x32 the last stage batch-normalizes 8 values per channel, whose
# tiny variances amplify float32 rounding past any useful tolerance; in float64 only a bug does.
MODEL_TOL = dict(rtol=1e-7, atol=1e-9)
# The entry point trains in float32 (two SGD steps): rounding, amplified as above. It runs the
# reference backend: the stem's ReLU makes many exact zeros that max-pool then ties, so a
# different summation order (the C++ kernels') flips a few ties and moves conv1's gradient by
# ~1e-3 whatever the process count; one backend in both runs isolates what this test is about,
# the sampler, DDP and SyncBN plumbing (the kernels' SyncBN is checked above, in float64).
CLI_TOL = dict(rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- op level
def _op_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 4, 3, generator=g) * 2 + 0.5
    weight, bias = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    grad_out = torch.randn(8, 5, 4, 3, generator=g)
    return x, weight, bias, grad_out


def _bn_relu_step(x, weight, bias, grad_out, group_name=""):
    """One training step of bn_relu: (out, x.grad, weight.grad, bias.grad, running_mean, running_var)."""
    import resnet_fast

    x = x.clone().requires_grad_()
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    running_mean, running_var = torch.zeros(5), torch.ones(5)
    out = resnet_fast.ops.bn_relu(x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                                  group_name=group_name)
    out.backward(grad_out)
    return out.detach(), x.grad, weight.grad, bias.grad, running_mean, running_var


def _op_worker(rank, world, split, out_dir):
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, weight, bias, grad_out = _op_inputs()
    lo, hi = split[rank], split[rank + 1]
    result = _bn_relu_step(x[lo:hi], weight, bias, grad_out[lo:hi], dist.group.WORLD.group_name)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    _spawn.leave_group()


@pytest.mark.parametrize("split", [(0, 4, 8), (0, 3, 8)], ids=["halves", "3+5"])
def test_bn_relu_group_name_matches_whole_batch(tmp_path, split):
    _spawn.run(_op_worker, split, str(tmp_path))
    out, grad_x, grad_w, grad_b, running_mean, running_var = _bn_relu_step(*_op_inputs())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), out, **OP_TOL)
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), grad_x, **OP_TOL)
    # dgamma/dbeta stay per rank, as in nn.SyncBatchNorm: DDP sums/averages them
    torch.testing.assert_close(ranks[0][2] + ranks[1][2], grad_w, **OP_TOL)
    torch.testing.assert_close(ranks[0][3] + ranks[1][3], grad_b, **OP_TOL)
    for r in ranks:
        torch.testing.assert_close(r[4], running_mean, **OP_TOL)
        torch.testing.assert_close(r[5], running_var, **OP_TOL)


# ----------------------------------------------------------------------------- model level
def _archs():
    """resnet18 and resnet50 (basic and bottleneck blocks), and one SE / pre-activation model once the zoo has them."""
    archs = available_archs()
    chosen = [a for a in ("resnet18", "resnet50") if a in archs]
    for family in ("se", "preact"):
        chosen += [a for a in archs if a.startswith(family)][:1]
    return chosen


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)


def _model(arch):
    torch.manual_seed(0)
    return build_model(arch, num_classes=10).double()


def _model_state(model):
    """Gradients of the parameters and the BN buffers, by name."""
    grads = {f"grad:{n}": p.grad.clone() for n, p in model.named_parameters()}
    buffers = {f"buf:{n}": b.clone() for n, b in model.named_buffers()}
    return {**grads, **buffers}


def _model_worker(rank, world, arch, out_dir):
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = distributed.Context(rank, rank, world, torch.device("cpu"))
    model = distributed.wrap(distributed.convert_sync_batchnorm(_model(arch)), ctx)
    images, labels = _batch()
    half = slice(rank * 4, rank * 4 + 4)
    F.cross_entropy(model(images[half]), labels[half]).backward()
    torch.save(_model_state(model.module), os.path.join(out_dir, f"rank{rank}.pt"))
    _spawn.leave_group()


@pytest.mark.parametrize("arch", _archs())
def test_sync_bn_model_matches_whole_batch(tmp_path, arch):
    _spawn.run(_model_worker, arch, str(tmp_path))
    model = _model(arch)
    images, labels = _batch()
    F.cross_entropy(model(images), labels).backward()
    expected = _model_state(model)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, **MODEL_TOL, msg=lambda m: f"rank {rank} {name}: {m}")


# ----------------------------------------------------------------------------- the entry point
def _cli_args(batch_size, out_dir):
    return ["--data", "synthetic", "--image-size", "32", "--num-classes", "10", "--synthetic-images", "64",
            "--batch-size", str(batch_size), "--epochs", "1", "--limit-batches", "2", "--lr", "0.1",
            "--sync-bn", "--no-progress", "--device", "cpu", "--backend", "reference", "--output-dir", out_dir]


def _cli_worker(rank, world, out_dir):
    from resnet_fast import train

    assert train.main(_cli_args(4, out_dir)) == 0


def test_train_two_processes_match_one_with_twice_the_batch(tmp_path):
    """2 processes x batch 4 see, step by step, the same 8 images as 1 process x batch 8 (the
    distributed sampler deals rank r the indices r, r + 2, ... of the same shuffle)."""
    from resnet_fast import train

    _spawn.run(_cli_worker, str(tmp_path / "two"))
    assert train.main(_cli_args(8, str(tmp_path / "one"))) == 0
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], **CLI_TOL, msg=lambda m: f"{name}: {m}")
