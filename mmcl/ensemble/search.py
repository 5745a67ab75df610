"""Weight search: coordinate ascent with an exact line search, on the pairs that matter.

See :mod:`mmcl.ensemble` for the method. Everything here is deterministic; only
:func:`fold_split` takes a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcl.ensemble.fusion import CHUNK_ROWS, fuse
from mmcl.errors import MMCLError


@dataclass
class SearchResult:
    weights: np.ndarray
    correct: int  # top-1 hits on the searched samples, with the rounded weights
    total: int
    rounds: int


@dataclass
class Threats:
    """Where the weights matter: the (sample, class) pairs that can beat the true class.

    Class ``c`` threatens sample ``i`` when some stream scores it at least as high as the true
    class. A sample with no threat is right for every non-negative weight vector; a sample
    where one class scores at least as high in *every* stream never wins strictly, whatever
    the weights. The search only ever looks at the threats, a few per sample instead of K.
    """

    sample: np.ndarray  # int64 [P], ascending: the sample (row) of each pair
    margin: np.ndarray  # float32 [S, P]: true-class score minus class-c score, per stream
    always_right: np.ndarray  # bool [N]
    always_wrong: np.ndarray  # bool [N]


def find_threats(scores: np.ndarray, labels: np.ndarray) -> Threats:
    """The :class:`Threats` of an [S, N, K] score array (chunked: small temporaries)."""
    num_streams, n = scores.shape[:2]
    samples, margins = [], []
    right = np.empty(n, dtype=bool)
    wrong = np.empty(n, dtype=bool)
    for start in range(0, n, CHUNK_ROWS):
        block = scores[:, start : start + CHUNK_ROWS]
        y = labels[start : start + CHUNK_ROWS]
        ar = np.arange(len(y))
        above = block - block[:, ar, y][:, :, None]  # [S, B, K]: class minus true class
        worst = above.max(axis=0)
        worst[ar, y] = -np.inf  # the true class does not compete with itself
        best = above.min(axis=0)
        best[ar, y] = -np.inf
        rr, cc = np.nonzero(worst >= 0)
        samples.append(rr + start)
        margins.append(-above[:, rr, cc])
        right[start : start + len(y)] = ~(worst >= 0).any(axis=1)
        wrong[start : start + len(y)] = (best >= 0).any(axis=1)  # never a strict win
    margin = np.concatenate(margins, axis=1) if margins else np.empty((num_streams, 0), np.float32)
    sample = np.concatenate(samples) if samples else np.empty(0, np.int64)
    return Threats(sample.astype(np.int64), margin, right, wrong)


class _LineSearch:
    """Exact line searches over one weight at a time, on the threats of the given rows."""

    def __init__(self, threats: Threats, rows: np.ndarray) -> None:
        n = len(threats.always_right)
        chosen = np.zeros(n, dtype=bool)
        chosen[rows] = True
        self.always_right = int((chosen & threats.always_right).sum())
        keep = chosen[threats.sample] & ~threats.always_wrong[threats.sample]
        self.sample = threats.sample[keep]
        self.margin = threats.margin[:, keep].astype(np.float64)
        # the pairs of one sample are contiguous: reduce over each group
        self.starts = np.flatnonzero(np.r_[True, self.sample[1:] != self.sample[:-1]]) if len(self.sample) else self.sample
        self.contested = self.sample[self.starts]

    def intervals(self, weights: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Per contested sample, the open interval of ``w_s`` on which it is right (others fixed).

        Pair ``p`` holds iff ``db + w_s * da > 0``, with ``da`` stream ``s``'s margin and
        ``db`` the other streams' weighted margin.
        """
        da = self.margin[s]
        db = weights @ self.margin - weights[s] * da
        with np.errstate(divide="ignore", invalid="ignore"):
            r = -db / da
        lo = np.where(da > 0, r, -np.inf)  # w_s > r
        # w_s < r where da < 0; where da == 0 the other streams alone decide
        hi = np.where(da < 0, r, np.where((da > 0) | (db > 0), np.inf, -np.inf))
        return np.maximum.reduceat(lo, self.starts), np.minimum.reduceat(hi, self.starts)


def _best_point(lo: np.ndarray, hi: np.ndarray, current: float, allow_zero: bool) -> tuple[float, int]:
    """The ``t`` in [0, 1] covered by most open intervals (lo, hi); ties keep ``current``."""
    ok = (lo < hi) & (hi > 0) & (lo < 1)
    lo, hi = np.sort(lo[ok]), np.sort(hi[ok])

    def count_at(t: np.ndarray) -> np.ndarray:  # intervals with lo < t < hi
        return np.searchsorted(lo, t, "left") - np.searchsorted(hi, t, "right")

    points = np.unique(np.concatenate([np.clip(lo, 0, 1), np.clip(hi, 0, 1), [0.0, 1.0]]))
    mids = (points[:-1] + points[1:]) / 2
    counts = count_at(mids)
    cand_t, cand_n = list(mids), list(counts)
    if allow_zero:
        cand_t.append(0.0)
        cand_n.append(int(count_at(np.array([0.0]))[0]))
    here = int(count_at(np.array([current]))[0]) if (current > 0 or allow_zero) else -1
    best = max(max(cand_n), here)
    if here >= best:
        return current, here
    cand = np.array(cand_t)[np.array(cand_n) == best]
    return float(cand[np.argmin(np.abs(cand - current))]), best


def search_weights(
    scores: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray | None = None,
    max_rounds: int = 10,
    threats: Threats | None = None,
) -> SearchResult:
    """Weights in [0, 1] (largest = 1) maximising top-1 on ``rows`` (all samples by default).

    ``threats`` (from :func:`find_threats`) may be passed in to reuse it across folds.
    """
    num_streams, n_all = scores.shape[0], scores.shape[1]
    rows = np.arange(n_all) if rows is None else np.asarray(rows)
    threats = threats if threats is not None else find_threats(scores, labels)
    search = _LineSearch(threats, rows)
    weights = np.ones(num_streams, dtype=np.float64)
    rounds = 0
    if num_streams > 1 and len(search.contested):
        for rounds in range(1, max_rounds + 1):
            changed = False
            for s in range(num_streams):
                lo, hi = search.intervals(weights, s)
                others = bool(np.delete(weights, s).any())
                t, _ = _best_point(lo, hi, float(weights[s]), allow_zero=others)
                if t != weights[s]:
                    weights[s], changed = t, True
            if not changed:
                break
    weights = np.round(weights / weights.max(), 4)
    correct = search.always_right + _top1_count(scores, weights, search.contested, labels)
    return SearchResult(weights, correct, len(rows), rounds)


def _top1_count(scores: np.ndarray, weights: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> int:
    """Top-1 hits of the fusion on ``rows``, fused block by block (no [N, K] temporary)."""
    count = 0
    for start in range(0, len(rows), CHUNK_ROWS):
        sel = rows[start : start + CHUNK_ROWS]
        count += int((fuse(scores, weights, sel).argmax(axis=1) == labels[sel]).sum())
    return count


def fold_split(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Random, near-equal folds of ``range(n)`` (deterministic for a seed), each sorted."""
    if folds < 2:
        raise MMCLError(f"--folds must be at least 2, got {folds}")
    if folds > n:
        raise MMCLError(f"--folds {folds} is more than the {n} samples")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, folds)]
