"""Data sets of the training entry point and their loaders.

``--data synthetic``  random images (throughput only; nothing to learn), no download.
``--data digits``     scikit-learn's bundled 8x8 digits (1,797 images, 10 classes),
                      upscaled to ``image_size``, a stratified 80/20 train/val split.
``--data PATH``       torchvision's ImageFolder layout: PATH/train/<class>/*, PATH/val/<class>/*.

Every data set comes with what inference needs to preprocess an image file the same way
(image and resize size, normalization, class names); checkpoints store it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from . import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataSpec:
    train: Dataset
    val: Dataset
    class_names: list[str]
    image_size: int  # side of the square the model sees
    resize_size: int  # inference: resize the shorter side to this, then center-crop image_size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- synthetic
class SyntheticImages(Dataset):
    """``length`` samples cycling through 64 fixed random images, with random labels."""

    def __init__(self, length: int, num_classes: int, image_size: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(min(64, length), 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(num_classes, (length,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index % len(self.images)], self.labels[index]


def synthetic(length: int, num_classes: int, image_size: int, seed: int) -> DataSpec:
    val_length = max(length // 8, 1)
    return DataSpec(SyntheticImages(length, num_classes, image_size, seed),
                    SyntheticImages(val_length, num_classes, image_size, seed + 1),
                    [str(c) for c in range(num_classes)], image_size, image_size, (0.0,) * 3, (1.0,) * 3)


# ----------------------------------------------------------------------------- digits
class ShiftedImages(Dataset):
    """Tensor images, each randomly translated by up to ``shift`` pixels (``shift`` = 0: as they are).

    ``images`` are padded by ``shift`` on every side with ``fill``; a sample is a random
    crop of the original size (torch's global RNG, so checkpoints restore it).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, fill: float = 0.0):
        self.size = images.shape[-1]
        self.shift = shift
        self.images = F.pad(images, (shift,) * 4, value=fill) if shift else images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.shift:
            top, left = torch.randint(2 * self.shift + 1, (2,)).tolist()
            image = image[:, top:top + self.size, left:left + self.size]
        return image, self.labels[index]


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (1797, 8, 8) in [0, 1], labels, train indices, val indices): a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, val_idx = train_test_split(range(len(labels)), test_size=0.2, stratify=bunch.target, random_state=0)
    return images, labels, torch.tensor(train_idx), torch.tensor(val_idx)


def digits(image_size: int, shift: int) -> DataSpec:
    """The digits upscaled (bilinear) to ``image_size``, gray replicated to 3 channels, standardized."""
    images, labels, train_idx, val_idx = digits_split()
    images = F.interpolate(images.unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = images[train_idx].mean().item(), images[train_idx].std().item()
    images = ((images - mean) / std).expand(-1, 3, -1, -1).contiguous()
    background = (0.0 - mean) / std
    return DataSpec(ShiftedImages(images[train_idx], labels[train_idx], shift, background),
                    ShiftedImages(images[val_idx], labels[val_idx]),
                    [str(c) for c in range(10)], image_size, image_size, (mean,) * 3, (std,) * 3)


# ----------------------------------------------------------------------------- ImageFolder
def eval_transform(image_size: int, resize_size: int, mean, std):
    """Resize the shorter side, center-crop, tensor, normalize: validation and ``predict``."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])


def check_folder(root: str) -> dict[str, str]:
    """{"train": ..., "val": ...} under ``root``, or a UsageError saying what is missing."""
    if not os.path.isdir(root):
        raise UsageError(f"--data {root}: no such directory (expected 'synthetic', 'digits' or an ImageFolder "
                         f"directory with train/ and val/)")
    parts = {split: os.path.join(root, split) for split in ("train", "val")}
    absent = [split + "/" for split, path in parts.items() if not os.path.isdir(path)]
    if absent:
        raise UsageError(f"--data {root}: no {' or '.join(absent)} subdirectory "
                         f"(ImageFolder layout: {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)")
    return parts


def image_folder(root: str, image_size: int) -> DataSpec:
    from torchvision import datasets
    from torchvision import transforms as T

    parts = check_folder(root)
    resize_size = round(image_size * 256 / 224)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        train = datasets.ImageFolder(parts["train"], transform=train_tf)
        val = datasets.ImageFolder(parts["val"], transform=eval_transform(image_size, resize_size,
                                                                          IMAGENET_MEAN, IMAGENET_STD))
    except (FileNotFoundError, OSError) as error:
        raise UsageError(f"--data {root}: {error}") from None
    if train.classes != val.classes:
        raise UsageError(f"--data {root}: train/ has {len(train.classes)} classes and val/ {len(val.classes)}; "
                         f"their class folders must be the same")
    return DataSpec(train, val, list(train.classes), image_size, resize_size, IMAGENET_MEAN, IMAGENET_STD)


# ----------------------------------------------------------------------------- loaders
class ShardSampler(Sampler):
    """Indices rank, rank + world, ...: every sample evaluated exactly once across the ranks."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = range(rank, length, world)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def loaders(spec: DataSpec, batch_size: int, workers: int, rank: int, world: int, seed: int,
            pin_memory: bool) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled by (seed, epoch): call ``sampler.set_epoch``) and val loader, for one rank.

    Batches are per process. Train drops the last partial batch (a batch of one sample
    cannot be batch-normalized); workers are started per epoch, seeded from torch's RNG,
    so a resumed run draws the same augmentations.
    """
    if len(spec.train) < batch_size * world:
        raise UsageError(f"the training set has {len(spec.train)} images, fewer than one batch "
                         f"({batch_size} x {world} processes); lower --batch-size")
    sampler = DistributedSampler(spec.train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    common = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin_memory)
    train = DataLoader(spec.train, sampler=sampler, drop_last=True, **common)
    val = DataLoader(spec.val, sampler=ShardSampler(len(spec.val), rank, world), **common)
    return train, val


def dataset(data: str, image_size: int, *, num_classes: int, synthetic_images: int, digits_shift: int,
            seed: int) -> DataSpec:
    """The DataSpec ``--data`` names: "synthetic", "digits" or an ImageFolder directory."""
    if data == "synthetic":
        return synthetic(synthetic_images, num_classes, image_size, seed)
    if data == "digits":
        return digits(image_size, digits_shift)
    return image_folder(data, image_size)
