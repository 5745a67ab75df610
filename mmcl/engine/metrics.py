"""Classification metrics from a score matrix: top-1, top-5, per-class accuracy, confusion.

NumPy only, so reports can be rebuilt from a score file without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Metrics:
    """Accuracy figures over one evaluated split."""

    top1: float
    top5: float
    per_class: np.ndarray  # float [K], NaN for classes absent from the split
    support: np.ndarray  # int [K], samples per class
    confusion: np.ndarray  # int [K, K], rows = true class, columns = predicted
    num_samples: int

    def summary(self) -> dict[str, Any]:
        """The scalar figures, JSON-ready."""
        return {"top1": self.top1, "top5": self.top5, "num_samples": self.num_samples}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "per_class": [None if np.isnan(a) else float(a) for a in self.per_class],
            "support": self.support.tolist(),
            "confusion": self.confusion.tolist(),
        }


def classification_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> Metrics:
    """Metrics over the samples whose label is known (label >= 0)."""
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    known = labels >= 0
    scores, labels = scores[known], labels[known]
    n = len(labels)
    k = min(5, num_classes)
    if n == 0:
        empty = np.full(num_classes, np.nan)
        return Metrics(float("nan"), float("nan"), empty, np.zeros(num_classes, np.int64),
                       np.zeros((num_classes, num_classes), np.int64), 0)
    pred = scores.argmax(1)
    topk = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
        np.arange(scores.shape[1]), (n, 1))
    top1 = float((pred == labels).mean())
    top5 = float((topk == labels[:, None]).any(1).mean())
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return Metrics(top1, top5, per_class, support, confusion, n)
