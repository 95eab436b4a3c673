"""One training epoch and one evaluation: AMP, channels_last, a tqdm bar, metrics summed over the ranks."""
from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

import resnet_fast

from .distributed import Context, all_reduce_sums

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Settings:
    amp: str | None  # None (fp32), "bf16" or "fp16"
    channels_last: bool
    progress: bool  # show the bar (the main process only)
    print_freq: int  # bar refresh every this many steps (each refresh waits for the device)

    def autocast(self, device: torch.device):
        dtype = AMP_DTYPES.get(self.amp)
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def to_device(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return (images.to(device, non_blocking=True, memory_format=fmt), labels.to(device, non_blocking=True))


def train_one_epoch(model: nn.Module, loader, criterion, optimizer, scheduler, scaler, ctx: Context,
                    settings: Settings, epoch: int, epochs: int, steps: int) -> tuple[dict, list[dict]]:
    """(epoch summary, per-step records) of the first ``steps`` batches of ``loader``; the scheduler steps
    per batch."""
    model.train()
    loader.sampler.set_epoch(epoch)
    losses, lrs = [], []
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    seen = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True,
               disable=not settings.progress)
    start = time.perf_counter()
    for i, (images, labels) in enumerate(itertools.islice(loader, steps)):
        images, labels = settings.to_device(images, labels, ctx.device)
        with settings.autocast(ctx.device):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lrs.append(optimizer.param_groups[0]["lr"])
        with warnings.catch_warnings():
            # An fp16 step skipped by the GradScaler (inf/NaN gradients) makes torch warn that the
            # scheduler stepped before the optimizer: on purpose, the schedule counts batches.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                    category=UserWarning)
            scheduler.step()
        losses.append(loss.detach())
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        bar.update()
        if settings.progress and ((i + 1) % settings.print_freq == 0 or i + 1 == steps):
            bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{100 * correct.item() / seen:.1f}%",
                            img_s=f"{seen * ctx.world / (time.perf_counter() - start):.1f}")
    step_losses = torch.stack(losses).float().cpu().tolist()
    elapsed = time.perf_counter() - start
    bar.close()
    batch = loader.batch_size
    loss_sum, correct_sum, seen_sum = all_reduce_sums([sum(step_losses) * batch, correct.item(), seen], ctx)
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"the training loss became {loss_sum / seen_sum} in epoch {epoch + 1}; "
                                 f"lower --lr or use --amp bf16 instead of fp16")
    first_step = scheduler.last_epoch - len(step_losses)
    steps = [{"epoch": epoch + 1, "step": first_step + i, "step_in_epoch": i, "loss": loss, "lr": lr}
             for i, (loss, lr) in enumerate(zip(step_losses, lrs))]
    summary = {"train_loss": loss_sum / seen_sum, "train_acc": correct_sum / seen_sum,
               "img_per_s": seen_sum / elapsed, "train_time_s": elapsed, "lr": lrs[-1]}
    return summary, steps


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion, ctx: Context, settings: Settings) -> dict:
    """Validation loss and top-1 accuracy, every sample counted once across the ranks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
    seen = 0
    batches = tqdm(loader, desc="val", unit="batch", leave=False, dynamic_ncols=True, disable=not settings.progress)
    with resnet_fast.inference_cache():  # the weights do not change while validating: fold BN once
        for images, labels in batches:
            images, labels = settings.to_device(images, labels, ctx.device)
            with settings.autocast(ctx.device):
                logits = model(images)
            loss_sum += criterion(logits.float(), labels).double() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
    loss_sum, correct, seen = all_reduce_sums([loss_sum.item(), correct.item(), seen], ctx)
    return {"val_loss": loss_sum / seen, "val_acc": correct / seen}
