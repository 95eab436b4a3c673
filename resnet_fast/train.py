"""Train a resnet_fast model: ``python -m resnet_fast.train`` (console script ``resnet-fast-train``).

    python -m resnet_fast.train                                 # synthetic data: throughput
    python -m resnet_fast.train --data digits --plot            # a real data set, no download
    python -m resnet_fast.train --data /path/imagenet --arch resnet50 --amp bf16 --channels-last
    torchrun --nproc_per_node 8 -m resnet_fast.train --data /path/imagenet --sync-bn

Writes to ``--output-dir``: ``last.pt`` (every epoch, atomically), ``best.pt``,
``metrics.jsonl``, ``steps.jsonl`` and, with ``--plot``, ``curves.png``.
``--resume OUTPUT_DIR/last.pt`` continues a run exactly where it stopped. See docs/training.md.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
from torch import nn

import resnet_fast
from resnet_fast.training import UsageError, checkpoint, cli, data, distributed, engine, logs, optim
from resnet_fast.training.models import available_archs, build_model, load_weights, unwrap


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv)
    if args.list_archs:
        print("\n".join(available_archs()))
        return 0
    try:
        run(args)
    except UsageError as error:
        cli.fail(error)
    except KeyboardInterrupt:
        sys.stderr.write("resnet-fast-train: interrupted; continue with --resume OUTPUT_DIR/last.pt\n")
        return 130
    finally:
        distributed.teardown()
    return 0


def run(args) -> dict:
    """Train as ``args`` says; returns the last epoch's metrics (on every rank)."""
    if args.backend:
        resnet_fast.set_backend(args.backend)
    ctx = distributed.setup(args.device)
    output_dir = args.output_dir or os.path.join("runs", f"{cli.data_kind(args.data)}-{args.arch}")
    _seed(args.seed)
    spec = data.dataset(args.data, args.image_size, num_classes=args.num_classes,
                        synthetic_images=args.synthetic_images, digits_shift=args.digits_shift, seed=args.seed)
    train_loader, val_loader = data.loaders(spec, args.batch_size, args.workers, ctx.rank, ctx.world, args.seed,
                                            pin_memory=ctx.device.type == "cuda")

    model = build_model(args.arch, spec.num_classes, zero_init_residual=args.zero_init_residual,
                        low_memory=args.low_memory)
    if args.sync_bn and ctx.distributed:
        model = distributed.convert_sync_batchnorm(model)
    model = model.to(ctx.device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    model = distributed.wrap(model, ctx)
    _seed(args.seed + ctx.rank)  # the same weights everywhere, different augmentations per rank

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    lr = args.lr or 0.1 * args.batch_size * ctx.world / 256
    optimizer = optim.sgd(model, lr, args.momentum, args.nesterov, args.weight_decay)
    steps_per_epoch = min(len(train_loader), args.limit_batches or len(train_loader))
    scheduler = optim.scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=args.epochs,
                                warmup_epochs=args.warmup_epochs, schedule=args.schedule,
                                step_size=args.lr_step_size, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    start_epoch, best_acc = 0, 0.0
    if args.resume:
        start_epoch, best_acc = _resume(args.resume, args, spec, model, optimizer, scheduler, scaler, ctx)

    settings = engine.Settings(args.amp, args.channels_last, ctx.main and not args.no_progress, args.print_freq)
    if ctx.main:
        epoch_log = logs.JsonLines(os.path.join(output_dir, "metrics.jsonl"), epochs_done=start_epoch)
        step_log = logs.JsonLines(os.path.join(output_dir, "steps.jsonl"), epochs_done=start_epoch)
        print(f"{args.arch} on {args.data} ({len(spec.train)} train / {len(spec.val)} val images, "
              f"{spec.num_classes} classes, {spec.image_size}px) | {ctx.world} process(es) on {ctx.device} | "
              f"batch {args.batch_size}/process, lr {lr:g}, epochs {start_epoch + 1}-{args.epochs} | "
              f"fused-op backend {resnet_fast.get_backend()} | {output_dir}", flush=True)
    if ctx.main and start_epoch >= args.epochs:
        print(f"nothing to do: the checkpoint has {start_epoch} epoch(s) done and --epochs is {args.epochs}")
    record = {}
    for epoch in range(start_epoch, args.epochs):
        record, step_records = engine.train_one_epoch(model, train_loader, criterion, optimizer, scheduler,
                                                      scaler, ctx, settings, epoch, args.epochs, steps_per_epoch)
        record = {"epoch": epoch + 1, **record, **engine.evaluate(model, val_loader, criterion, ctx, settings)}
        rng = distributed.all_gather_objects(checkpoint.rng_state(ctx.device), ctx)
        if not ctx.main:
            continue
        best = record["val_acc"] > best_acc
        best_acc = max(best_acc, record["val_acc"])
        state = _state(args, spec, model, optimizer, scheduler, scaler, epoch + 1, best_acc, rng)
        _save(state, output_dir, epoch, best, args.keep_checkpoints)
        epoch_log.extend([record])
        step_log.extend(step_records)
        if args.plot:
            logs.plot_curves(epoch_log.records, step_log.records, os.path.join(output_dir, "curves.png"),
                             title=f"{args.arch} on {_data_name(args.data)}")
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {record['train_loss']:.4f} acc "
              f"{100 * record['train_acc']:.2f}% | val loss {record['val_loss']:.4f} acc "
              f"{100 * record['val_acc']:.2f}% | {record['img_per_s']:.1f} img/s, "
              f"{record['train_time_s']:.1f} s", flush=True)
    if ctx.main and epoch_log.records:
        print(_closing_line(epoch_log.records, output_dir), flush=True)
    distributed.barrier(ctx)
    return record


def _data_name(data_arg: str) -> str:
    """"digits", "synthetic", or an image folder's name (for the curves' title)."""
    kind = cli.data_kind(data_arg)
    return kind if kind != "folder" else os.path.basename(os.path.normpath(data_arg))


def _closing_line(records: list[dict], output_dir: str) -> str:
    best = logs.best_epoch(records)
    return (f"done: best val acc {100 * best['val_acc']:.2f}% at epoch {best['epoch']} (best.pt); "
            f"checkpoints and logs in {os.path.abspath(output_dir)}")


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _state(args, spec, model, optimizer, scheduler, scaler, epoch, best_acc, rng) -> dict:
    return {"format": checkpoint.FORMAT, "arch": args.arch, "num_classes": spec.num_classes,
            "class_names": spec.class_names, "image_size": spec.image_size, "resize_size": spec.resize_size,
            "mean": list(spec.mean), "std": list(spec.std),
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "best_acc": best_acc, "rng": rng, "args": {k: v for k, v in vars(args).items() if k != "list_archs"}}


def _save(state: dict, output_dir: str, epoch: int, best: bool, keep: bool) -> None:
    last = os.path.join(output_dir, "last.pt")
    checkpoint.save_atomic(state, last)
    if best:
        checkpoint.copy_atomic(last, os.path.join(output_dir, "best.pt"))
    if keep:
        checkpoint.copy_atomic(last, os.path.join(output_dir, f"epoch_{epoch + 1:03d}.pt"))


def _resume(path, args, spec, model, optimizer, scheduler, scaler, ctx) -> tuple[int, float]:
    """Load the checkpoint at ``path`` into the run; (epochs completed, best accuracy)."""
    state = checkpoint.load(path)
    checkpoint.check_fits(state, path, args.arch, spec.class_names)
    load_weights(unwrap(model), state["model"], f"--resume {path}")
    checkpoint.load_state(optimizer, state["optimizer"], path, "optimizer")
    checkpoint.load_state(scheduler, state["scheduler"], path, "scheduler")
    checkpoint.load_state(scaler, state["scaler"], path, "GradScaler")
    rng = state["rng"]
    checkpoint.set_rng_state(rng[ctx.rank] if ctx.rank < len(rng) else rng[0], ctx.device)
    if ctx.main:
        print(f"resumed from {path}: {state['epoch']} epoch(s) done, best val acc {100 * state['best_acc']:.2f}%")
    return state["epoch"], state["best_acc"]


if __name__ == "__main__":
    sys.exit(main())
