"""Classify image files with a trained checkpoint (console script ``resnet-fast-predict``).

    python -m resnet_fast.predict cat.jpg dog.png --checkpoint runs/folder-resnet50/best.pt --topk 5

Preprocessing is the checkpoint's own (image size, resize size, normalization, stored by
``resnet_fast.train``), else the ImageNet standard: resize 256, center crop 224, ImageNet
mean/std. The model runs in eval mode with BatchNorm folded into the convolutions (the
fused models fold it in their ops). Prints the top-k classes with their probabilities
(softmax), or JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import resnet_fast
from resnet_fast.backend import BACKENDS
from resnet_fast.training import UsageError, checkpoint, cli
from resnet_fast.training.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from resnet_fast.training.models import build_model, for_inference, load_weights

PROG = "resnet-fast-predict"


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog=PROG, description="Classify images with a checkpoint written by resnet-fast-train.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything PIL reads)")
    p.add_argument("--checkpoint", required=True, help="e.g. runs/digits-resnet18/best.pt")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backend", choices=BACKENDS, help="fused-op backend (default: RESNET_FAST_BACKEND or auto)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def load_model(path: str, device: torch.device):
    """(inference model, checkpoint metadata) from a training checkpoint."""
    state = checkpoint.load(path, what="--checkpoint")
    model = build_model(state["arch"], state["num_classes"])
    load_weights(model, state["model"], f"--checkpoint {path}")
    return for_inference(model.to(device)), state


def preprocess(state: dict):
    """The checkpoint's evaluation transform (ImageNet's standard where it stores none)."""
    return eval_transform(state.get("image_size", 224), state.get("resize_size", 256),
                          state.get("mean", IMAGENET_MEAN), state.get("std", IMAGENET_STD))


def read_image(path: str, transform) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise UsageError(f"{path}: cannot read it as an image ({error})") from None


@torch.no_grad()
def predict(paths: list[str], model, state: dict, device: torch.device, topk: int = 5,
            batch_size: int = 32) -> list[dict]:
    """[{"image": path, "top": [{"class": name, "index": i, "prob": p}, ...]}] for each path."""
    transform = preprocess(state)
    names = state["class_names"]
    k = min(topk, len(names))
    results = []
    with resnet_fast.inference_cache():  # BN folded into the weights once, not per batch
        for start in range(0, len(paths), batch_size):
            results += _predict_batch(paths[start:start + batch_size], model, transform, names, k, device)
    return results


def _predict_batch(chunk: list[str], model, transform, names: list, k: int, device: torch.device) -> list[dict]:
    batch = torch.stack([read_image(p, transform) for p in chunk]).to(device)
    probs, indices = torch.softmax(model(batch).float(), dim=1).topk(k, dim=1)
    return [{"image": path, "top": [{"class": names[i], "index": i, "prob": p} for p, i in zip(p_row, i_row)]}
            for path, p_row, i_row in zip(chunk, probs.tolist(), indices.tolist())]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.topk < 1 or args.batch_size < 1:
            raise UsageError("--topk and --batch-size must be positive")
        if args.backend:
            resnet_fast.set_backend(args.backend)
        use_cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        device = torch.device("cuda" if use_cuda else "cpu")
        model, state = load_model(args.checkpoint, device)
        results = predict(args.images, model, state, device, args.topk, args.batch_size)
    except UsageError as error:
        cli.fail(error, PROG)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["image"])
            for entry in result["top"]:
                print(f"  {100 * entry['prob']:6.2f}%  {entry['class']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
