"""Normalisation, fusion, top-k hits and the ``--weights`` syntax (NumPy only)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mmcl.errors import MMCLError

NORMALIZATIONS = ("none", "softmax", "zscore")
CHUNK_ROWS = 4096  # rows per block in the vectorised loops: bounds the temporaries
TOPK = 5


def normalize_(scores: np.ndarray, how: str) -> None:
    """Normalise a [S, N, K] (or [N, K]) score array in place, row by row over the classes."""
    if how not in NORMALIZATIONS:
        raise MMCLError(f"unknown normalization {how!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if how == "none":
        return
    flat = scores.reshape(-1, scores.shape[-1])
    for start in range(0, len(flat), CHUNK_ROWS):
        block = flat[start : start + CHUNK_ROWS]
        if how == "softmax":
            block -= block.max(axis=1, keepdims=True)
            np.exp(block, out=block)
            block /= block.sum(axis=1, keepdims=True)
        else:
            block -= block.mean(axis=1, keepdims=True)
            std = block.std(axis=1, keepdims=True)
            std[std == 0] = 1.0
            block /= std


def fuse(scores: np.ndarray, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``sum_s weights[s] * scores[s]`` in float32, accumulated in stream order (as upstream)."""
    n = scores.shape[1] if rows is None else len(rows)
    out = np.empty((n, scores.shape[2]), dtype=np.float32)
    tmp = np.empty((min(CHUNK_ROWS, n), scores.shape[2]), dtype=np.float32)
    w32 = np.asarray(weights, dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        sel = slice(start, stop) if rows is None else rows[start:stop]
        dst, t = out[start:stop], tmp[: stop - start]
        np.multiply(scores[0, sel], w32[0], out=dst)
        for s in range(1, scores.shape[0]):
            np.multiply(scores[s, sel], w32[s], out=t)
            dst += t
    return out


def accumulate_(acc: np.ndarray, scores: np.ndarray, weight: float, first: bool) -> None:
    """``acc = weight * scores`` (first stream) or ``acc += weight * scores``, in float32.

    Same arithmetic as :func:`fuse`, one stream at a time.
    """
    w32 = np.float32(weight)
    if first:
        np.multiply(scores, w32, out=acc)
        return
    tmp = np.empty((min(CHUNK_ROWS, len(acc)), acc.shape[1]), dtype=np.float32)
    for start in range(0, len(acc), CHUNK_ROWS):
        t = tmp[: min(CHUNK_ROWS, len(acc) - start)]
        np.multiply(scores[start : start + len(t)], w32, out=t)
        acc[start : start + len(t)] += t


def hits(scores: np.ndarray, labels: np.ndarray, k: int = TOPK) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample top-1 and top-k hits of an [N, K] score array.

    Top-1 is ``argmax == label`` (first index on ties, as ``torch.max`` / ``np.argmax``).
    Top-k counts a hit when fewer than k classes score strictly higher than the true class.
    """
    top1 = np.empty(len(labels), dtype=bool)
    topk = np.empty(len(labels), dtype=bool)
    for start in range(0, len(labels), CHUNK_ROWS * 4):
        block = scores[start : start + CHUNK_ROWS * 4]
        y = labels[start : start + CHUNK_ROWS * 4]
        top1[start : start + len(y)] = block.argmax(axis=1) == y
        true = block[np.arange(len(y)), y]
        topk[start : start + len(y)] = np.count_nonzero(block > true[:, None], axis=1) < k
    return top1, topk


def parse_weights(text: str, streams: Sequence[str]) -> np.ndarray:
    """``"0.6,0.6,0.4,0.4"`` (one per stream, in order) or ``"j=2,b=2,jm=1,bm=1"`` (by name)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise MMCLError("--weights is empty")
    named = ["=" in t for t in items]
    if any(named) and not all(named):
        raise MMCLError(f"--weights {text!r}: use either all plain numbers or all name=value pairs")
    if all(named):
        table: dict[str, float] = {}
        for item in items:
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in streams:
                raise MMCLError(f"--weights: unknown stream {key!r}; the streams are {', '.join(streams)}")
            if key in table:
                raise MMCLError(f"--weights: stream {key!r} is given twice")
            table[key] = _number(value, key)
        missing = [s for s in streams if s not in table]
        if missing:
            raise MMCLError(f"--weights: no weight for stream(s) {', '.join(missing)}")
        weights = np.array([table[s] for s in streams], dtype=np.float64)
    else:
        if len(items) != len(streams):
            raise MMCLError(
                f"--weights gives {len(items)} numbers for {len(streams)} streams ({', '.join(streams)})"
            )
        weights = np.array([_number(v, s) for v, s in zip(items, streams)], dtype=np.float64)
    if (weights < 0).any():
        raise MMCLError(f"--weights must be non-negative, got {format_weights(weights, streams)}")
    if not weights.any():
        raise MMCLError("--weights are all zero")
    return weights


def _number(text: str, stream: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MMCLError(f"--weights: {text.strip()!r} (stream {stream}) is not a number") from None
    if not math.isfinite(value):
        raise MMCLError(f"--weights: the weight of stream {stream} must be finite, got {text.strip()}")
    return value


def format_weights(weights: Sequence[float], streams: Sequence[str]) -> str:
    """``j=1,b=0.5`` with the shortest text that round-trips, ready to paste into --weights."""
    return ",".join(f"{s}={float(w):.6g}" for s, w in zip(streams, weights))
