"""Command line of ``python -m resnet_fast.train``: flags, per-data-set defaults, one-line errors."""
from __future__ import annotations

import argparse
import os
import sys

from resnet_fast.backend import BACKENDS

from . import UsageError
from .data import check_folder
from .engine import AMP_DTYPES
from .models import check_arch

# Flags left unset take these, by data set. lr None: 0.1 x global batch / 256 (the linear scaling rule).
# digits: the recipe measured in docs/training.md (>= 95% val accuracy with resnet18 on 2 CPU cores).
DATA_DEFAULTS = {
    "synthetic": dict(image_size=224, epochs=1, batch_size=32, lr=None, warmup_epochs=0.0, workers=0,
                      zero_init_residual=False),
    "digits": dict(image_size=16, epochs=6, batch_size=32, lr=0.05, warmup_epochs=0.3, workers=0,
                   zero_init_residual=True),
    "folder": dict(image_size=224, epochs=90, batch_size=64, lr=None, warmup_epochs=1.0,
                   workers=min(8, os.cpu_count() or 1), zero_init_residual=False),
}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _defaults_epilog() -> str:
    lines = ["flags left unset take their data set's default:"]
    for kind, values in DATA_DEFAULTS.items():
        shown = ", ".join(f"--{k.replace('_', '-')} {'0.1 x global batch / 256' if v is None else v}"
                          for k, v in values.items())
        lines.append(f"  {kind}: {shown}")
    return "\n".join(lines)


def parser(prog: str = "resnet-fast-train") -> Parser:
    p = Parser(prog=prog, description="Train a resnet_fast model (synthetic data by default; no download).",
               epilog=_defaults_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--data", default="synthetic", help="'synthetic' (default), 'digits' (scikit-learn's 8x8 digits, "
                                            "upscaled) or an ImageFolder directory with train/ and val/")
    add("--arch", default="resnet18", help="model builder (default: resnet18; see --list-archs)")
    add("--list-archs", action="store_true", help="print the --arch choices and exit")
    add("--backend", choices=BACKENDS, help="fused-op backend (default: RESNET_FAST_BACKEND or auto)")
    add("--amp", choices=sorted(AMP_DTYPES), help="mixed precision (fp16 with a GradScaler; default: fp32)")
    add("--channels-last", action="store_true", help="NHWC model and inputs")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: a GPU if there is one")
    add("--zero-init-residual", action=argparse.BooleanOptionalAction,
        help="start each residual branch's last BN at zero")
    add("--low-memory", action="store_true",
        help="rerun some convolutions in backward instead of keeping their outputs (ResNet.set_low_memory)")
    g = p.add_argument_group("schedule and optimizer (SGD)")
    g.add_argument("--epochs", type=_positive(int))
    g.add_argument("--batch-size", type=_positive(int), help="per process")
    g.add_argument("--lr", type=_positive(float), help="base learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="default: 0.9")
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight-decay", type=float, default=5e-5,
                   help="default: 5e-5; never on BN parameters and biases")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="default: 0")
    g.add_argument("--schedule", choices=("cosine", "step"), default="cosine", help="default: cosine")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up, per step (may be fractional)")
    g.add_argument("--lr-step-size", type=_positive(int), default=30, help="step schedule: epochs per decay "
                                                                           "(default: 30)")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: decay factor (default: 0.1)")
    g = p.add_argument_group("data")
    g.add_argument("--image-size", type=_positive(int), help="side of the (square) training images")
    g.add_argument("--workers", type=int, help="data-loading processes per training process")
    g.add_argument("--num-classes", type=_positive(int), default=1000, help="synthetic data (default: 1000)")
    g.add_argument("--synthetic-images", type=_positive(int), default=1024,
                   help="synthetic images per epoch (default: 1024)")
    g.add_argument("--digits-shift", type=int, default=2,
                   help="digits: random translation in training, in pixels (default: 2)")
    g.add_argument("--limit-batches", type=_positive(int), help="at most this many training batches per epoch")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", help="checkpoints and logs (default: runs/<data>-<arch>)")
    g.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint, e.g. OUTPUT_DIR/last.pt")
    g.add_argument("--keep-checkpoints", action="store_true", help="also keep every epoch's epoch_NNN.pt")
    g.add_argument("--plot", action="store_true", help="write curves.png (loss and accuracy) in --output-dir")
    g.add_argument("--sync-bn", action="store_true",
                   help="synchronize BatchNorm statistics across the processes (torchrun)")
    g.add_argument("--seed", type=int, default=0, help="default: 0")
    g.add_argument("--no-progress", action="store_true", help="no progress bar, one line per epoch")
    g.add_argument("--print-freq", type=_positive(int), default=10,
                   help="progress-bar refresh every this many steps (default: 10)")
    return p


def data_kind(data: str) -> str:
    return data if data in ("synthetic", "digits") else "folder"


def parse(argv: list[str] | None = None, prog: str = "resnet-fast-train") -> argparse.Namespace:
    """Parsed and checked arguments, the data set's defaults filled in; exits 2 on a usage error."""
    p = parser(prog)
    args = p.parse_args(argv)
    if args.list_archs:
        return args
    for name, value in DATA_DEFAULTS[data_kind(args.data)].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        check(args)
    except UsageError as error:
        p.error(str(error))
    return args


def check(args: argparse.Namespace) -> None:
    check_arch(args.arch)
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.warmup_epochs < 0 or args.warmup_epochs > args.epochs:
        raise UsageError(f"--warmup-epochs must be between 0 and --epochs ({args.epochs}), got {args.warmup_epochs}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.digits_shift < 0:
        raise UsageError(f"--digits-shift must be >= 0, got {args.digits_shift}")
    if data_kind(args.data) == "folder":
        check_folder(args.data)
    if args.resume and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume}: no such file")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")


def fail(error: UsageError, prog: str = "resnet-fast-train"):
    """Report a usage error found after parsing, as ``parse`` does, and exit 2."""
    sys.stderr.write(f"{prog}: error: {error}\n")
    raise SystemExit(2)
