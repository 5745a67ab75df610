"""``mmcl ensemble`` as one function: :func:`run_ensemble` takes an :class:`EnsembleRequest`
and returns the results dict that ``--json`` prints (and writes ``--out``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmcl import __version__
from mmcl.ensemble.fusion import NORMALIZATIONS, accumulate_, format_weights, fuse, hits, parse_weights
from mmcl.ensemble.inputs import ScoreSet, load_streams, open_streams, preview
from mmcl.ensemble.labels import LabelSource, attach_labels
from mmcl.ensemble.search import find_threats, fold_split, search_weights
from mmcl.errors import MMCLError
from mmcl.scores import save_scores


METHOD = "coordinate ascent with an exact line search, weights in [0, 1]"


@dataclass
class EnsembleRequest:
    """Everything ``mmcl ensemble`` was asked to do (the CLI fills it from its options)."""

    scores: Sequence[Path]
    stream_names: Sequence[str] | None = None
    weights: str | None = None
    normalize: str = "none"
    intersect: bool = False
    labels: LabelSource | None = None
    search: bool = False
    search_on: Sequence[Path] = ()
    folds: int | None = None
    seed: int = 0
    out: Path | None = None
    progress: bool = False  # tqdm bars on stderr (when it is a terminal)


def _check_request(req: EnsembleRequest) -> None:
    if req.normalize not in NORMALIZATIONS:
        raise MMCLError(f"unknown normalization {req.normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    searching = req.search or bool(req.search_on)
    if req.weights is not None and searching:
        raise MMCLError("--weights fixes the weights and --search/--search-on searches them: give one")
    if req.folds is not None and req.search_on:
        raise MMCLError("--folds is for cross-fitting on the test scores; it cannot go with --search-on")
    if req.folds is not None and not searching:
        raise MMCLError("--folds only applies with --search")
    if req.search_on and len(req.search_on) != len(req.scores):
        raise MMCLError(
            f"--search-on gives {len(req.search_on)} validation files for {len(req.scores)} "
            "streams; give one per stream, in the same order"
        )


def _metric_row(top1: np.ndarray | None, topk: np.ndarray | None) -> dict[str, float | None]:
    if top1 is None or topk is None:
        return {"top1": None, "top5": None}
    return {"top1": float(top1.mean()), "top5": float(topk.mean())}


@dataclass
class _Ensemble:
    """One reported ensemble: its results entry, fused scores and per-sample top-1 hits."""

    entry: dict[str, Any]
    fused: np.ndarray
    top1: np.ndarray | None


class _Results:
    """Builds the results dict (what ``--json`` prints) row by row."""

    def __init__(self, data: ScoreSet, req: EnsembleRequest, labelled: bool) -> None:
        self.streams, self.labels, self.labelled = data.streams, data.labels, labelled
        self.data: dict[str, Any] = {
            "mmcl_version": __version__,
            "num_samples": int(len(data.names)),
            "num_classes": data.num_classes,
            "normalize": req.normalize,
            "labels": (req.labels.description if req.labels else "from the score files") if labelled else None,
            "intersect": {"used": req.intersect, "dropped": dict(zip(map(str, data.files), data.dropped))},
            "streams": [],
            "ensembles": [],
            "notes": [f"{path}: {meta['positional_names']}"
                      for path, meta in zip(data.files, data.metas) if meta.get("positional_names")],
        }

    def add_stream(self, name: str, path: Path, scores: np.ndarray) -> np.ndarray | None:
        """Record a single stream; return its per-sample top-1 hits (None without labels)."""
        top1 = topk = None
        if self.labelled:
            top1, topk = hits(scores, self.labels)
        self.data["streams"].append({"name": name, "file": str(path), **_metric_row(top1, topk)})
        return top1

    def add_ensemble(
        self, name: str, weights: np.ndarray | None, fused: np.ndarray, protocol: str, optimistic: bool = False
    ) -> _Ensemble:
        """Record an ensemble (``weights`` None: a different weight vector per fold)."""
        top1 = topk = None
        if self.labelled:
            top1, topk = hits(fused, self.labels)
        entry: dict[str, Any] = {
            "name": name,
            "weights": None if weights is None else dict(zip(self.streams, map(float, weights))),
            "weights_arg": None if weights is None else format_weights(weights, self.streams),
            "protocol": protocol,
            "optimistic": optimistic,
            **_metric_row(top1, topk),
        }
        self.data["ensembles"].append(entry)
        return _Ensemble(entry, fused, top1)


def run_ensemble(req: EnsembleRequest) -> dict[str, Any]:
    """Fuse, evaluate, search and write as ``req`` asks; return the results (the --json dict).

    Without a search the streams are read one at a time (memory: about three [N, K] arrays);
    a search holds all of them in one [S, N, K] array.
    """
    _check_request(req)
    searching = req.search or bool(req.search_on)
    with open_streams(req.scores, req.stream_names, req.intersect, req.labels) as data:
        attach_labels(data, req.labels)
        labelled = _check_labelled(data, searching)
        results = _Results(data, req, labelled)
        fixed = [("equal weights", np.ones(len(data.streams)), "fixed weights, no tuning")]
        if req.weights is not None:
            fixed.append(("given weights", parse_weights(req.weights, data.streams),
                          "fixed weights from --weights, no tuning"))

        # one pass over the streams: single-stream metrics and the fixed-weight fusions
        fused = [np.empty((len(data.names), data.num_classes), dtype=np.float32) for _ in fixed]
        stream_top1 = []
        matrices = data.materialize(req.normalize) if searching else data.iter_scores(req.normalize)
        for s, matrix in enumerate(matrices):
            stream_top1.append(results.add_stream(data.streams[s], data.files[s], matrix))
            for acc, (_, weights, _) in zip(fused, fixed):
                accumulate_(acc, matrix, weights[s], first=s == 0)
        final = None
        for acc, (name, weights, protocol) in zip(fused, fixed):
            final = results.add_ensemble(name, weights, acc, protocol)
        del fused, acc
        if searching:
            final = None  # the fixed-weight fusions are reported: free them before the search
            search = _search_validation if req.search_on else _search_kfold
            final = search(req, data, results)
    assert final is not None

    out = results.data
    out["final"] = final.entry["name"]
    out["weights_used"] = final.entry["weights_arg"]
    if labelled and stream_top1:  # per class, and the samples fixed or broken vs the best stream
        best = int(np.argmax([t.mean() for t in stream_top1]))
        out["best_stream"] = data.streams[best]
        out.update(_per_class(data.labels, stream_top1[best], final.top1, data.num_classes, data.class_names))
    if req.out is not None:
        save_scores(req.out, data.names, final.fused, data.labels, _out_meta(data, req, final.entry, out))
        out["out"] = str(req.out)
    return out


def _check_labelled(data: ScoreSet, searching: bool) -> bool:
    """Whether every sample has a label; partial labels, or a search without labels, are errors."""
    if data.has_labels:
        return True
    if (data.labels >= 0).any():
        missing = data.names[data.labels < 0]
        raise MMCLError(
            f"{len(missing)} of {len(data.names)} samples have no label (first: {preview(missing)}); "
            "give --labels FILE or --data DIR --benchmark B"
        )
    if searching:
        raise MMCLError(
            "--search needs labels: the score files carry none; give --labels FILE or --data DIR --benchmark B"
        )
    return False


def _search_validation(req: EnsembleRequest, data: ScoreSet, results: _Results) -> _Ensemble:
    """Search on held-out validation scores; report the test accuracy of those weights."""
    val = load_streams(req.search_on, data.streams, req.intersect, None, normalize=req.normalize)
    for vpath, vmeta, tpath, tmeta in zip(val.files, val.metas, data.files, data.metas):
        if vmeta.get("stream") and tmeta.get("stream") and vmeta["stream"] != tmeta["stream"]:
            raise MMCLError(
                f"--search-on file {vpath} is stream {vmeta['stream']!r} but the test file in that "
                f"position, {tpath}, is {tmeta['stream']!r}; list them in the same order"
            )
    if val.num_classes != data.num_classes:
        raise MMCLError(
            f"the validation scores have {val.num_classes} classes, the test scores {data.num_classes}"
        )
    if req.labels is not None:  # the naming rule / dataset labels the validation names too
        attach_labels(val, LabelSource(req.labels.description, None, req.labels.label_of,
                                       origin=req.labels.origin))
    if not val.has_labels:
        missing = val.names[val.labels < 0]
        raise MMCLError(
            f"--search-on: {len(missing)} validation samples have no label (first: {preview(missing)}); "
            "validation score files must carry labels, or their names must follow the --labels/--data rule"
        )
    overlap = np.isin(val.names, data.names)
    if overlap.any():
        raise MMCLError(
            f"--search-on: {int(overlap.sum())} validation samples are also test samples "
            f"(first: {preview(val.names[overlap])}); a validation set must be held out from the test set"
        )
    found = search_weights(val.scores, val.labels)
    del val
    results.data["search"] = {
        "protocol": "validation",
        "method": METHOD,
        "validation_files": [str(p) for p in req.search_on],
        "validation_samples": found.total,
        "validation_top1": found.correct / found.total,
        "rounds": found.rounds,
    }
    protocol = f"weights searched on {found.total} validation samples; test labels never used"
    return results.add_ensemble("searched (validation)", found.weights, fuse(data.scores, found.weights), protocol)


def _search_kfold(req: EnsembleRequest, data: ScoreSet, results: _Results) -> _Ensemble:
    """k-fold cross-fitting on the test scores: out-of-fold top-1, plus the optimistic figure."""
    folds = req.folds if req.folds is not None else 5
    n = len(data.names)
    parts = fold_split(n, folds, req.seed)
    threats = find_threats(data.scores, data.labels)
    fused = np.empty((n, data.num_classes), dtype=np.float32)
    fold_rows: list[dict[str, Any]] = []
    for f in _progress(range(folds), req.progress, "cross-fitting"):
        train = np.concatenate([p for i, p in enumerate(parts) if i != f])
        found = search_weights(data.scores, data.labels, train, threats=threats)
        fused[parts[f]] = fuse(data.scores, found.weights, parts[f])
        fold_rows.append({
            "fold": f,
            "samples": int(len(parts[f])),
            "weights": dict(zip(data.streams, map(float, found.weights))),
            "weights_arg": format_weights(found.weights, data.streams),
            "top1": float((fused[parts[f]].argmax(axis=1) == data.labels[parts[f]]).mean()),
            "search_top1": found.correct / found.total,
        })
    everything = search_weights(data.scores, data.labels, threats=threats)
    results.data["search"] = {
        "protocol": "kfold", "method": METHOD, "folds": folds, "seed": req.seed, "fold_results": fold_rows,
    }
    honest = results.add_ensemble(
        f"searched ({folds}-fold cross-fit)", None, fused,
        f"out-of-fold: each fold's weights searched on the other {folds - 1} folds",
    )
    results.add_ensemble(
        "searched on all test samples", everything.weights, fuse(data.scores, everything.weights),
        "OPTIMISTIC: tuned on these same test labels", optimistic=True,
    )
    return honest


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="fold", disable=None, leave=False)


def _per_class(
    y: np.ndarray, best: np.ndarray, ens: np.ndarray, num_classes: int, class_names: list[str] | None
) -> dict[str, Any]:
    count = np.bincount(y, minlength=num_classes)
    best_hits = np.bincount(y, weights=best, minlength=num_classes)
    ens_hits = np.bincount(y, weights=ens, minlength=num_classes)
    fixed = ~best & ens
    broken = best & ~ens
    fixed_c = np.bincount(y[fixed], minlength=num_classes)
    broken_c = np.bincount(y[broken], minlength=num_classes)
    names = class_names if class_names and len(class_names) == num_classes else None
    rows = []
    for c in range(num_classes):
        if count[c] == 0:
            continue
        rows.append({
            "class": c,
            "name": names[c] if names else None,
            "samples": int(count[c]),
            "best_stream_top1": float(best_hits[c] / count[c]),
            "ensemble_top1": float(ens_hits[c] / count[c]),
            "fixed": int(fixed_c[c]),
            "broken": int(broken_c[c]),
        })
    return {"per_class": rows, "fixed": int(fixed.sum()), "broken": int(broken.sum())}


def _out_meta(data: ScoreSet, req: EnsembleRequest, entry: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "stream": "ensemble",
        "model": "ensemble",
        "ensemble": {
            "streams": data.streams,
            "files": [str(p) for p in data.files],
            "weights": entry["weights"],
            "normalize": req.normalize,
            "protocol": entry["protocol"],
        },
    }
    search = results.get("search") or {}
    if entry["weights"] is None and search.get("fold_results"):
        meta["ensemble"]["fold_weights"] = [r["weights"] for r in search["fold_results"]]
    for key in ("dataset", "benchmark"):
        values = {m.get(key) for m in data.metas if m.get(key)}
        if len(values) == 1:
            meta[key] = values.pop()
    if data.class_names:
        meta["class_names"] = data.class_names
    return meta
