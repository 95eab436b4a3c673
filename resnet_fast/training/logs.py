"""The run's logs in ``--output-dir``: ``metrics.jsonl`` (one record per epoch), ``steps.jsonl``
(one per optimizer step: epoch, step, loss, lr) and, with ``--plot``, ``curves.png``.
"""
from __future__ import annotations

import json
import os


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class JsonLines:
    """An append-only JSON-lines file of records with an ``epoch`` (counted from 1).

    ``epochs_done``: resuming after that many epochs, records of later epochs are dropped.
    """

    def __init__(self, path: str, epochs_done: int = 0):
        self.path = path
        self.records = [r for r in read_jsonl(path) if r["epoch"] <= epochs_done]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)

    def extend(self, records: list[dict]) -> None:
        self.records.extend(records)
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


def best_epoch(records: list[dict]) -> dict:
    """The epoch record with the highest validation accuracy (the first of equals, as best.pt keeps)."""
    return max(records, key=lambda r: r["val_acc"])


def plot_curves(epochs: list[dict], steps: list[dict], path: str, title: str = "") -> None:
    """Loss (per step and per epoch) and accuracy (per epoch) against epochs (from 1), as a PNG
    titled ``title`` (e.g. "resnet18 on digits")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        per_epoch = {}
        for r in steps:
            per_epoch[r["epoch"]] = per_epoch.get(r["epoch"], 0) + 1
        # Step i of epoch e (from 1) lies between the ends of epochs e - 1 and e.
        x = [r["epoch"] - 1 + (r["step_in_epoch"] + 1) / per_epoch[r["epoch"]] for r in steps]
        loss_ax.plot(x, [r["loss"] for r in steps], color="tab:blue", alpha=0.3, lw=0.8, label="train (step)")
    ends = [r["epoch"] for r in epochs]
    loss_ax.plot(ends, [r["train_loss"] for r in epochs], "o-", color="tab:blue", label="train (epoch)")
    loss_ax.plot(ends, [r["val_loss"] for r in epochs], "o-", color="tab:orange", label="val")
    acc_ax.plot(ends, [100 * r["train_acc"] for r in epochs], "o-", color="tab:blue", label="train")
    acc_ax.plot(ends, [100 * r["val_acc"] for r in epochs], "o-", color="tab:orange", label="val")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
