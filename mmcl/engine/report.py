"""Human-readable outputs: the tabulated report and the PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tabulate import tabulate

from mmcl.engine.metrics import Metrics


def format_report(metrics: Metrics, class_names: Sequence[str], *, title: str = "") -> str:
    """Top-1/top-5 and a per-class accuracy table, as plain text."""
    head = tabulate(
        [["top-1", f"{100 * metrics.top1:.2f}%"], ["top-5", f"{100 * metrics.top5:.2f}%"],
         ["samples", metrics.num_samples]],
        tablefmt="simple",
    )
    rows = []
    for i, name in enumerate(class_names):
        acc = metrics.per_class[i]
        correct = int(metrics.confusion[i, i])
        wrong = metrics.confusion[i].copy()
        wrong[i] = 0
        confused = class_names[int(wrong.argmax())] if wrong.any() else ""
        rows.append([i, name, int(metrics.support[i]), correct,
                     "-" if np.isnan(acc) else f"{100 * acc:.1f}", confused])
    table = tabulate(rows, headers=["#", "class", "samples", "correct", "acc %", "most confused with"],
                     tablefmt="simple")
    parts = [title, head, "", table] if title else [head, "", table]
    return "\n".join(parts) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path, *, title: str = "") -> None:
    """Row-normalized confusion matrix with class names on both axes."""
    plt = _pyplot()
    k = len(class_names)
    rows = confusion.sum(1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    size = min(4 + 0.32 * k, 40)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    fontsize = max(4, min(9, 300 // max(k, 1)))
    ax.set_xticklabels(class_names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title or "confusion matrix")
    _save(fig, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl file."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curve(records: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Loss, learning rate and train/test accuracy against epoch, from metrics.jsonl records."""
    plt = _pyplot()
    epochs = [r for r in records if r.get("kind") == "epoch"]
    steps = [r for r in records if r.get("kind") == "step"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax_loss.plot([r["epoch_float"] for r in steps], [r["loss"] for r in steps],
                     color="0.7", lw=0.8, label="train loss (steps)")
    ax_loss.plot([r["epoch"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot([r["epoch"] for r in epochs], [r["lr"] for r in epochs], "--", color="tab:red", label="lr")
    ax_lr.set_ylabel("learning rate", color="tab:red")
    handles = ax_loss.get_legend_handles_labels()[0] + ax_lr.get_legend_handles_labels()[0]
    ax_loss.legend(handles=handles, loc="upper right")
    ax_acc.plot([r["epoch"] for r in epochs], [100 * r["train_top1"] for r in epochs], "o-", label="train top-1")
    tested = [r for r in epochs if r.get("test_top1") is not None]
    ax_acc.plot([r["epoch"] for r in tested], [100 * r["test_top1"] for r in tested], "s-", label="test top-1")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy %")
    ax_acc.set_ylim(0, 100)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    fig.suptitle(title or "training curve")
    fig.subplots_adjust(wspace=0.45)
    _save(fig, path)
