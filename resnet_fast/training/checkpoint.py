"""Training checkpoints: written atomically, read with one-line errors, restoring every RNG.

A checkpoint is a dict (``torch.load(..., weights_only=True)`` reads it):

  format        FORMAT
  arch, num_classes, class_names, image_size, resize_size, mean, std   (what ``predict`` needs)
  model         the state_dict (no DDP ``module.`` prefix)
  optimizer, scheduler, scaler   their state_dicts
  epoch         epochs completed;  best_acc  best validation accuracy so far
  rng           per rank: torch CPU (and CUDA) generator, Python's and NumPy's
  args          the command line, for the record
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile

import numpy as np
import torch

from . import UsageError

FORMAT = "resnet_fast.train/1"


# ----------------------------------------------------------------------------- writing
def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash leaves either the old file or the new one, never a partial file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_atomic(source: str, path: str) -> None:
    """``path`` becomes a copy of ``source`` (a hard link where the file system allows), atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- RNG
def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ----------------------------------------------------------------------------- reading
def load(path: str, what: str = "--resume") -> dict:
    """The checkpoint at ``path`` (on the CPU), or a UsageError saying why it cannot be one."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: no such file")
    # torch.save writes a zip archive; a file that does not start like one (a text file, a legacy
    # pickle, an image) is not a checkpoint; a zip that does not read is a damaged one.
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise UsageError(f"{what} {path}: not a checkpoint (not a file written by torch.save); "
                         "give the last.pt or best.pt of a training run's --output-dir")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a Python object: a whole pickled model or other foreign file. torch's own
        # message advises weights_only=False, which would run the file's code: not passed on.
        raise UsageError(f"{what} {path}: not a resnet_fast training checkpoint (it holds Python objects "
                         "that a checkpoint of resnet-fast-train does not)") from None
    except Exception as error:  # noqa: BLE001  (truncated zip, missing record, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{what} {path}: not a readable checkpoint (corrupt or truncated?): {reason}") from None
    if not isinstance(checkpoint, dict) or "format" not in checkpoint:
        raise UsageError(f"{what} {path}: not a resnet_fast training checkpoint (no 'format' entry)")
    if checkpoint["format"] != FORMAT:
        raise UsageError(f"{what} {path}: checkpoint format {checkpoint['format']!r}, this version reads {FORMAT!r}")
    return checkpoint


def check_fits(checkpoint: dict, path: str, arch: str, class_names: list[str]) -> None:
    """UsageError unless the checkpoint was trained with this ``arch`` on these classes."""
    if checkpoint["arch"] != arch:
        raise UsageError(f"--resume {path}: trained with --arch {checkpoint['arch']}, this run has --arch {arch}")
    if list(checkpoint["class_names"]) != list(class_names):
        raise UsageError(f"--resume {path}: trained on {checkpoint['num_classes']} classes "
                         f"{_preview(checkpoint['class_names'])}, this data has {len(class_names)} "
                         f"{_preview(class_names)}")


def load_state(obj, state: dict, path: str, name: str) -> None:
    """``obj.load_state_dict(state)`` with the error turned into one line naming the part."""
    try:
        obj.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as error:
        raise UsageError(f"--resume {path}: its {name} state does not fit this run "
                         f"({str(error).strip().splitlines()[0]})") from None


def _preview(names: list[str]) -> str:
    return "[" + ", ".join(names[:4]) + (", ...]" if len(names) > 4 else "]")
