"""Multi-stream score fusion: align by sample name, fuse with weights, search weights honestly.

The pieces, in the order ``mmcl ensemble`` uses them:

1. **Reading.** mmcl score files (``.npz``, see :mod:`mmcl.scores`) and the upstream format, a
   pickled ``{sample_name: score_vector}`` dict (CTR-GCN, MMCL-Action), read only through
   :mod:`mmcl.safe_pickle`.
2. **Aligning.** Every file is joined to the first file's row order **by sample name**. Differing
   name sets, class counts, duplicate names and NaN/inf scores are errors; ``intersect=True``
   keeps only the samples every file (and the label list) has.
3. **Labels** come from the files, from a name list through a dataset's naming rule (NTU:
   ``A### - 1``), or from a prepared dataset. Where two sources disagree, that is an error.
4. **Fusion.** ``sum_s w_s * normalize(scores_s)``, accumulated in float32 in stream order, the
   same arithmetic the upstream scripts use. Normalization is ``none`` (raw logits, as upstream),
   ``softmax`` or ``zscore`` (each stream's logits standardised per sample over the classes).
5. **Weight search** maximises top-1 by *coordinate ascent with an exact line search*:

   - Weights live in the box ``[0, 1]^S``. Fusion is scale-invariant, so the box loses nothing.
   - Start from equal weights. For one stream ``s`` at a time, hold the others fixed. Each
     sample is then correct for ``w_s`` in an interval (the true class must beat every other
     class, and each such condition is linear in ``w_s``). A sweep over the interval ends
     gives the exact top-1 for every ``w_s`` in ``[0, 1]``; take the best, keeping the current
     value on ties, otherwise the nearest best value (the midpoint of its segment).
   - Repeat rounds over the streams until a round changes nothing (at most ``max_rounds``).
     Top-1 never decreases, so it converges to a coordinate-wise optimum.
   - Finally rescale so the largest weight is 1 and round to 4 decimals. The reported
     accuracy is recomputed with exactly these printed weights.
   - Only *threats* matter: (sample, class) pairs where some stream scores the class at least
     as high as the true class (:func:`find_threats`). A sample without threats is right for
     every non-negative weight vector, so the sweeps work on a few pairs per sample instead
     of all K classes, and the k folds of cross-fitting reuse the same threats.

6. **Honest protocols.** ``search_on`` (a validation set: weights never see the test labels) or
   k-fold cross-fitting on the test scores (each fold's weights come from the other folds; the
   out-of-fold top-1 is the reported figure and the searched-on-everything figure is shown
   beside it, labelled optimistic).

This module imports NumPy only, never torch, so the command starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mmcl import __version__
from mmcl.errors import MMCLError
from mmcl.safe_pickle import safe_load
from mmcl.scores import (
    ScoreFile,
    check_labels,
    open_npz,
    read_header,
    read_matrix,
    save_scores,
    scores_shape,
)

NORMALIZATIONS = ("none", "softmax", "zscore")
CHUNK_ROWS = 4096  # rows per block in the vectorised loops: bounds the temporaries
SHOWN = 5  # how many example names an error lists
TOPK = 5


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """``"npz"`` for an mmcl score file, ``"pickle"`` for the upstream format."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise MMCLError(f"{path}: no such score file") from None
    except IsADirectoryError:
        raise MMCLError(f"{path}: is a folder; give score files (.npz or upstream .pkl)") from None
    if head[:2] == b"PK":
        return "npz"
    if head[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle"):
        return "pickle"
    raise MMCLError(
        f"{path}: unknown score format: expected an mmcl score file (.npz) "
        "or an upstream score pickle ({sample_name: score vector})"
    )


def read_upstream_pickle(path: Path) -> ScoreFile:
    """Read a CTR-GCN / MMCL-Action ``{sample_name: 1-D score array}`` pickle safely."""
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise MMCLError(
            f"{path}: expected a pickled dict {{sample_name: score vector}}, got {type(obj).__name__}"
        )
    if not obj:
        raise MMCLError(f"{path}: the score dict is empty")
    keys = list(obj.keys())
    names: list[str] = []
    for key in keys:
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if not isinstance(key, str):
            raise MMCLError(f"{path}: sample names must be strings; found key {key!r}")
        names.append(str(key))
    values = list(obj.values())
    first = np.shape(values[0])
    for name, value in zip(names, values):
        if not isinstance(value, np.ndarray) or value.shape != first:  # slow path: find the culprit
            shape = np.shape(value)
            if len(shape) != 1 or shape != first:
                raise MMCLError(
                    f"{path}: sample {name!r} has scores of shape {shape}; every sample needs a "
                    f"1-D vector of the same length (the first sample has {first})"
                )
    if len(first) != 1:
        raise MMCLError(f"{path}: sample {names[0]!r} has scores of shape {first}; expected a 1-D vector")
    try:
        matrix = np.concatenate([np.asarray(v) for v in values]).reshape(len(values), first[0])
    except (ValueError, TypeError) as exc:
        raise MMCLError(f"{path}: the score vectors do not form an [N, K] array ({exc})") from None
    if matrix.dtype.kind not in "fiu":
        raise MMCLError(f"{path}: scores must be numbers, got dtype {matrix.dtype}")
    return ScoreFile(
        names=np.asarray(names, dtype=str),
        scores=matrix.astype(np.float32, copy=False),
        labels=np.full(len(names), -1, dtype=np.int64),
        meta={"format": "upstream-pickle"},
    )


def load_any(path: Path) -> ScoreFile:
    """Read a score file of either format (whole, unaligned)."""
    path = Path(path)
    if detect_format(path) == "pickle":
        return read_upstream_pickle(path)
    from mmcl.scores import load_scores

    return load_scores(path)


@dataclass
class _Input:
    """One input file between the two loading passes (names first, scores later)."""

    path: Path
    names: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]
    npz: Any = None
    matrix: np.ndarray | None = None
    rows: int = -1  # row count, kept after ``names`` is released

    def __post_init__(self) -> None:
        self.rows = len(self.names)

    def release_names(self) -> None:
        """Drop the per-file names once aligned (with several files they add up)."""
        self.names = np.empty(0, dtype=str)

    def shape(self) -> tuple[int, ...]:
        return self.matrix.shape if self.matrix is not None else scores_shape(self.path, self.npz)

    def read_scores(self, out: np.ndarray | None = None) -> np.ndarray:
        """The score matrix in file row order (read into ``out`` when the layout allows).

        Callers may modify the result only when it is ``out``.
        """
        if self.matrix is not None:
            return self.matrix
        return read_matrix(self.path, self.npz, self.rows, out)


def _open_input(path: Path, stack: contextlib.ExitStack) -> _Input:
    if detect_format(path) == "pickle":
        sf = read_upstream_pickle(path)
        return _Input(path, sf.names, sf.labels, sf.meta, matrix=sf.scores)
    npz = stack.enter_context(open_npz(path))
    header = read_header(path, npz)
    return _Input(path, header.names, header.labels, header.meta, npz=npz)


# --------------------------------------------------------------------------------------------
# Label sources
# --------------------------------------------------------------------------------------------
@dataclass
class LabelSource:
    """Where labels come from when the score files do not carry them.

    ``names`` is the evaluation set the source defines (the name list, or the dataset's test
    split): the score files must cover exactly it. ``label_of`` maps names to labels, -1 where
    it has none.
    """

    description: str
    names: np.ndarray | None
    label_of: Callable[[np.ndarray], np.ndarray]
    class_names: list[str] | None = None
    origin: str = "the labels"  # short name for error messages (the list file, the dataset)


def labels_from_name_list(path: Path) -> LabelSource:
    """A file with one NTU sample name per line (e.g. upstream ``NTU120_XSub_Val.txt``).

    Lines may carry a ``.skeleton`` suffix or a folder; blank lines and ``#`` comments are
    skipped. Labels come from the naming rule, ``A### - 1``.
    """
    from mmcl.data.naming import ntu_label, parse_ntu_name

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MMCLError(f"{path}: no such name list") from None
    except UnicodeDecodeError as exc:
        raise MMCLError(f"{path}: not a text name list ({exc})") from None
    names: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parse_ntu_name(line)
        except MMCLError as exc:
            raise MMCLError(f"{path}, line {lineno}: {exc}") from None
        stem = line.replace("\\", "/").rsplit("/", 1)[-1]
        names.append(stem[: -len(".skeleton")] if stem.endswith(".skeleton") else stem)
    if not names:
        raise MMCLError(f"{path}: the name list is empty")

    def label_of(query: np.ndarray) -> np.ndarray:
        out = np.empty(len(query), dtype=np.int64)
        for i, name in enumerate(query.tolist()):
            try:
                out[i] = ntu_label(name)
            except MMCLError as exc:
                raise MMCLError(f"cannot label sample from its name via {path}: {exc}") from None
        return out

    return LabelSource(
        description=f"NTU naming rule (A### - 1) on the names in {path}",
        names=np.asarray(names, dtype=str),
        label_of=label_of,
        origin=str(path),
    )


def labels_from_dataset(dataset: Any, benchmark: str, where: str) -> LabelSource:
    """Labels of a prepared dataset (``mmcl.data.open_dataset``); the test split is the set."""
    splits = dataset.splits
    if benchmark not in splits:
        raise MMCLError(f"{where}: no benchmark {benchmark!r}; this dataset has {sorted(splits)}")
    test = splits[benchmark].get("test")
    if not test:
        raise MMCLError(f"{where}: benchmark {benchmark!r} has no test split")
    table = dict(zip(list(dataset.names), np.asarray(dataset.labels).tolist()))

    def label_of(query: np.ndarray) -> np.ndarray:
        return np.fromiter((table.get(n, -1) for n in query.tolist()), np.int64, len(query))

    class_names = list(getattr(dataset, "class_names", None) or []) or None
    return LabelSource(
        description=f"prepared dataset {where}, benchmark {benchmark} (test split)",
        names=np.asarray(test, dtype=str),
        label_of=label_of,
        class_names=class_names,
        origin=f"{where} ({benchmark} test split)",
    )


# --------------------------------------------------------------------------------------------
# Aligning streams by name
# --------------------------------------------------------------------------------------------
@dataclass
class ScoreSet:
    """Streams aligned by sample name. Stream ``s`` scores sample ``names[i]`` in row ``i``.

    Built by :func:`open_streams`, which reads names and labels only. The scores are then
    either streamed one aligned stream at a time (:meth:`iter_scores`, memory of about two
    streams), or held as one float32 [S, N, K] array (:meth:`materialize`, for the search).
    """

    names: np.ndarray
    labels: np.ndarray  # int64 [N], -1 unknown
    streams: list[str]
    files: list[Path]
    metas: list[dict[str, Any]]
    num_classes: int
    class_names: list[str] | None = None
    dropped: list[int] = field(default_factory=list)  # rows each file lost to ``intersect``
    label_from: np.ndarray | None = None  # per sample: which file (index) its label came from
    scores: np.ndarray | None = None  # float32 [S, N, K] once materialized
    normalized: str = "none"
    _inputs: list[_Input] = field(default_factory=list, repr=False)
    _index: list[np.ndarray | None] = field(default_factory=list, repr=False)
    _closer: contextlib.ExitStack | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.label_from is None:
            self.label_from = np.where(self.labels >= 0, 0, -1)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def __enter__(self) -> "ScoreSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the input files (a materialized set keeps its scores)."""
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def iter_scores(self, normalize: str = "none") -> Iterator[np.ndarray]:
        """Each stream's aligned, checked and normalised [N, K] scores, in stream order.

        Without :meth:`materialize`, the arrays are reused buffers: use each before the next.
        """
        if self.scores is not None:
            if normalize != self.normalized:
                raise MMCLError(f"scores were normalised with {self.normalized!r}, not {normalize!r}")
            yield from self.scores
            return
        aligned = np.empty((len(self.names), self.num_classes), dtype=np.float32)
        buffers: dict[str, np.ndarray] = {}
        for s in range(len(self._inputs)):
            yield self._read_stream(s, aligned, buffers, normalize)

    def materialize(self, normalize: str = "none") -> np.ndarray:
        """Read every stream into one float32 [S, N, K] array (kept in ``scores``)."""
        if self.scores is None:
            stack = np.empty((len(self.streams), len(self.names), self.num_classes), dtype=np.float32)
            buffers: dict[str, np.ndarray] = {}
            for s in range(len(self._inputs)):
                self._read_stream(s, stack[s], buffers, normalize)
            self.scores, self.normalized = stack, normalize
        elif normalize != self.normalized:
            raise MMCLError(f"scores were normalised with {self.normalized!r}, not {normalize!r}")
        return self.scores

    def _read_stream(self, s: int, out: np.ndarray, buffers: dict[str, np.ndarray], normalize: str) -> np.ndarray:
        """Stream ``s`` aligned into ``out`` (files in another row order go through a reused buffer)."""
        if self._closer is None:
            raise MMCLError("the score files of this ScoreSet are closed")
        item, idx = self._inputs[s], self._index[s]
        if idx is None:
            matrix = item.read_scores(out=out)
        else:
            raw = buffers.get("raw")
            if raw is None or len(raw) < item.rows:
                raw = buffers["raw"] = np.empty((item.rows, self.num_classes), dtype=np.float32)
            matrix = item.read_scores(out=raw[: item.rows])
        if matrix.ndim != 2 or matrix.shape != (item.rows, self.num_classes):
            raise MMCLError(
                f"{item.path}: scores of shape {matrix.shape}, expected [{item.rows}, {self.num_classes}]"
            )
        if idx is not None:
            np.take(matrix, idx, axis=0, out=out, mode="clip")  # idx is valid; 'clip' avoids a temp
        elif matrix is not out:
            out[...] = matrix
        _check_finite(item.path, self.names, out)  # rows --intersect dropped do not matter
        normalize_(out, normalize)
        return out


def _first(names: np.ndarray | Sequence[str], n: int = SHOWN) -> str:
    shown = [str(x) for x in list(names[:n])]
    more = "" if len(names) <= n else ", ..."
    return ", ".join(shown) + more


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _name_keys(names: np.ndarray, width: int) -> np.ndarray:
    """A 64-bit FNV-style hash of each name, vectorised (names padded to ``width`` characters).

    Keys only speed up sorting and matching; every match they suggest is confirmed on the
    strings themselves, so a hash collision can cost time but never correctness.
    """
    arr = np.ascontiguousarray(names.astype(f"<U{max(width, 1)}", copy=False))
    codes = arr.view(np.uint32).reshape(len(arr), max(width, 1))
    keys = np.full(len(arr), _FNV_OFFSET, dtype=np.uint64)
    for j in range(codes.shape[1]):
        keys *= _FNV_PRIME
        keys ^= codes[:, j]
    return keys


def _width(*arrays: np.ndarray) -> int:
    return max(a.dtype.itemsize // 4 for a in arrays)


def _check_unique(where: Path | str, names: np.ndarray, keys: np.ndarray | None = None) -> None:
    if keys is not None:
        ordered = np.sort(keys)
        if not (ordered[1:] == ordered[:-1]).any():
            return  # distinct keys imply distinct names
    ordered = np.sort(names)
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(dup):
        dup = np.unique(dup)
        raise MMCLError(
            f"{where}: {len(dup)} sample name(s) appear more than once (first: {_first(dup)}); "
            "each sample must have exactly one row"
        )


def _index_of(
    targets: np.ndarray,
    names: np.ndarray,
    target_keys: np.ndarray | None = None,
    name_keys: np.ndarray | None = None,
) -> np.ndarray:
    """Row of each target in ``names`` (-1 where absent); ``names`` must be unique."""
    if len(names) == 0:
        return np.full(len(targets), -1, dtype=np.intp)
    if target_keys is not None and name_keys is not None and len(targets) == len(names):
        st, sn = np.argsort(target_keys), np.argsort(name_keys)
        if np.array_equal(target_keys[st], name_keys[sn]):
            idx = np.empty(len(targets), dtype=np.intp)
            idx[st] = sn
            if np.array_equal(names[idx], targets):
                return idx
    sorter = np.argsort(names)
    pos = np.searchsorted(names, targets, sorter=sorter)
    cand = sorter[np.minimum(pos, len(names) - 1)]
    return np.where(names[cand] == targets, cand, -1)


def _set_mismatch(a_label: str, a: np.ndarray, b_label: str, b: np.ndarray) -> MMCLError:
    only_a = a[~np.isin(a, b)]
    only_b = b[~np.isin(b, a)]
    parts = [f"{a_label} and {b_label} list different samples: {len(a)} vs {len(b)} names."]
    if len(only_a):
        parts.append(f"{len(only_a)} of {a_label}'s are missing from {b_label} (first: {_first(only_a)}).")
    if len(only_b):
        parts.append(f"{len(only_b)} of {b_label}'s are not in {a_label} (first: {_first(only_b)}).")
    parts.append("Pass --intersect to keep only the samples they all have.")
    return MMCLError(" ".join(parts))


def _stream_names(inputs: Sequence[_Input], given: Sequence[str] | None) -> list[str]:
    if given is not None:
        given = [g.strip() for g in given]
        if len(given) != len(inputs):
            raise MMCLError(f"--names gives {len(given)} stream names for {len(inputs)} score files")
        for g in given:
            if not g or any(c in g for c in ",="):
                raise MMCLError(f"stream name {g!r} must be non-empty and contain no ',' or '='")
        if len(set(given)) != len(given):
            raise MMCLError(f"stream names must be unique, got {list(given)}")
        return list(given)
    out: list[str] = []
    for item in inputs:
        base = str(item.meta.get("stream") or item.path.stem).replace(",", "_").replace("=", "_")
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def _check_meta(inputs: Sequence[_Input]) -> list[str] | None:
    """Files must agree on dataset, benchmark and class names wherever they state them."""
    for key in ("dataset", "benchmark", "class_names"):
        seen: tuple[Path, Any] | None = None
        for item in inputs:
            value = item.meta.get(key)
            if not value:
                continue
            if seen is None:
                seen = (item.path, value)
            elif value != seen[1]:
                shown = (lambda v: f"{len(v)} names" if isinstance(v, list) else repr(v))
                raise MMCLError(
                    f"{item.path} and {seen[0]} disagree on {key}: {shown(value)} vs {shown(seen[1])}"
                    + (" (or their order)" if key == "class_names" else "")
                )
    for item in inputs:
        if item.meta.get("class_names"):
            return [str(c) for c in item.meta["class_names"]]
    return None


def open_streams(
    paths: Sequence[Path],
    stream_names: Sequence[str] | None = None,
    intersect: bool = False,
    expected: LabelSource | None = None,
) -> ScoreSet:
    """Open score files of any format and align them by sample name to the first file's order.

    Only names, labels and shapes are read here; use the result as a context manager and get
    the scores from :meth:`ScoreSet.iter_scores` or :meth:`ScoreSet.materialize`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise MMCLError("no score files given")
    closer = contextlib.ExitStack()
    try:
        inputs = [_open_input(p, closer) for p in paths]
        if expected is not None and expected.names is not None:
            for item in inputs:
                _resolve_positional_names(item, expected)
        streams = _stream_names(inputs, stream_names)
        class_names = _check_meta(inputs)
        names, index = _align(inputs, intersect, expected)
        ref = inputs[0]
        ref_shape = ref.shape()
        num_classes = int(ref_shape[1]) if len(ref_shape) == 2 else 0
        labels = np.full(len(names), -1, dtype=np.int64)
        label_from = np.full(len(names), -1, dtype=np.int64)
        for s, (item, idx) in enumerate(zip(inputs, index)):
            shape = item.shape()
            if len(shape) != 2 or shape[0] != len(item.names):
                raise MMCLError(f"{item.path}: scores must be [N = {len(item.names)}, K], got shape {shape}")
            if shape[1] != num_classes:
                raise MMCLError(
                    f"{item.path} has {shape[1]} classes but {ref.path} has {num_classes}; "
                    "all streams must score the same classes"
                )
            check_labels(item.path, item.names, item.labels, num_classes)
            file_labels = item.labels if idx is None else item.labels[idx]
            _merge_labels(labels, label_from, file_labels, names, s, [str(p) for p in paths])
        dropped = [item.rows - len(names) for item in inputs]
        for item in inputs:
            item.release_names()
        return ScoreSet(
            names, labels, streams, paths, [i.meta for i in inputs], num_classes, class_names,
            dropped, label_from, _inputs=inputs, _index=index, _closer=closer,
        )
    except BaseException:
        closer.close()
        raise


POSITIONAL_PREFIX = "test_"


def _resolve_positional_names(item: _Input, source: LabelSource) -> None:
    """CTR-GCN names test samples ``test_<i>``: row ``i`` of its test split, whose ordered names
    the label source lists. Replace such names by the real ones (and say so in the meta)."""
    names = item.names
    if not len(names) or not str(names[0]).startswith(POSITIONAL_PREFIX):
        return
    if not np.char.startswith(names, POSITIONAL_PREFIX).all():
        return
    digits = np.char.lstrip(np.char.replace(names, POSITIONAL_PREFIX, "", count=1), "0123456789")
    if (digits != "").any():
        return
    rows = np.char.replace(names, POSITIONAL_PREFIX, "", count=1).astype(np.int64)
    assert source.names is not None
    if rows.max() >= len(source.names):
        raise MMCLError(
            f"{item.path}: names like {POSITIONAL_PREFIX}<i> are CTR-GCN's row numbers in its test split, but "
            f"{item.path} has {POSITIONAL_PREFIX}{rows.max()} and {source.origin} lists only "
            f"{len(source.names)} names"
        )
    item.names = source.names[rows]
    item.meta = {**item.meta, "positional_names": f"{POSITIONAL_PREFIX}<i> read as line i of {source.origin}"}


def load_streams(
    paths: Sequence[Path],
    stream_names: Sequence[str] | None = None,
    intersect: bool = False,
    expected: LabelSource | None = None,
    normalize: str = "none",
) -> ScoreSet:
    """:func:`open_streams`, then read all scores into ``ScoreSet.scores`` [S, N, K]."""
    with open_streams(paths, stream_names, intersect, expected) as data:
        data.materialize(normalize)
    return data


def _align(
    inputs: Sequence[_Input], intersect: bool, expected: LabelSource | None
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The common sample names (in the first file's order) and each file's row for each name.

    A file already in that order gets ``None``. Errors name the files and the first differences.
    """
    ref = inputs[0]
    exp_names = None if expected is None else expected.names
    exp_label = "the label list" if expected is None else expected.origin
    width = _width(*(item.names for item in inputs), *([] if exp_names is None else [exp_names]))
    same_order = [np.array_equal(item.names, ref.names) for item in inputs]
    keys: list[np.ndarray | None] = [None] * len(inputs)
    keys[0] = _name_keys(ref.names, width)
    _check_unique(ref.path, ref.names, keys[0])
    for i, (item, same) in enumerate(zip(inputs, same_order)):
        if not same:
            keys[i] = _name_keys(item.names, width)
            _check_unique(item.path, item.names, keys[i])
    exp_keys = None
    if exp_names is not None:
        exp_keys = _name_keys(exp_names, width)
        _check_unique(exp_label, exp_names, exp_keys)

    names = ref.names
    if intersect:
        keep = np.ones(len(ref.names), dtype=bool)
        for item, same in zip(inputs[1:], same_order[1:]):
            if not same:
                keep &= np.isin(ref.names, item.names)
        if exp_names is not None:
            keep &= np.isin(ref.names, exp_names)
        if not keep.all():
            names = ref.names[keep]
        if len(names) == 0:
            raise MMCLError("--intersect: the score files (and labels) have no sample in common")
    full = len(names) == len(ref.names)
    name_keys = keys[0] if full else _name_keys(names, width)
    index = [
        None if (same and full) else _index_of(names, item.names, name_keys, keys[i])
        for i, (item, same) in enumerate(zip(inputs, same_order))
    ]
    if not intersect:
        for item, idx in zip(inputs[1:], index[1:]):
            if idx is not None and (len(item.names) != len(names) or (idx < 0).any()):
                raise _set_mismatch(str(ref.path), ref.names, str(item.path), item.names)
        if exp_names is not None and (
            len(exp_names) != len(names) or (_index_of(exp_names, names, exp_keys, name_keys) < 0).any()
        ):
            raise _set_mismatch(str(ref.path), ref.names, str(exp_label), exp_names)
    return names, index


def _check_finite(path: Path, names: np.ndarray, matrix: np.ndarray) -> None:
    for start in range(0, len(matrix), CHUNK_ROWS * 4):
        block = matrix[start : start + CHUNK_ROWS * 4]
        finite = np.isfinite(block)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise MMCLError(
                f"{path}: sample {str(names[start + row])!r} has a non-finite score "
                f"({block[row, col]}) for class {col}; scores must be finite numbers"
            )


def _merge_labels(
    data_labels: np.ndarray,
    label_from: np.ndarray,
    new: np.ndarray,
    names: np.ndarray,
    source: int,
    sources: Sequence[Any],
) -> None:
    """Fill unknown labels from ``new`` (source number ``source``); a disagreement is an error."""
    known = new >= 0
    if not known.any():
        return
    clash = known & (data_labels >= 0) & (data_labels != new)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise MMCLError(
            f"labels disagree for sample {str(names[i])!r}: {sources[source]} says {new[i]}, "
            f"{sources[label_from[i]]} says {data_labels[i]} ({int(clash.sum())} sample(s) disagree)"
        )
    fill = known & (data_labels < 0)
    data_labels[fill] = new[fill]
    label_from[fill] = source


def attach_labels(data: ScoreSet, source: LabelSource | None) -> None:
    """Fill ``data.labels`` from ``source``, checking it against the labels the files carry."""
    if source is None:
        return
    new = source.label_of(data.names)
    sources = [*map(str, data.files), source.origin]
    _merge_labels(data.labels, data.label_from, new, data.names, len(data.files), sources)
    check_labels(Path(source.origin), data.names, data.labels, data.num_classes)
    if source.class_names and data.class_names is None:
        data.class_names = source.class_names


# --------------------------------------------------------------------------------------------
# Normalisation, fusion, metrics
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Weight search: coordinate ascent with an exact line search (see the module docstring)
# --------------------------------------------------------------------------------------------
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
    where one class is strictly higher in *every* stream is wrong for all of them. The search
    only ever looks at the threats, a few per sample instead of all K classes.
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
        wrong[start : start + len(y)] = (best > 0).any(axis=1)
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


# --------------------------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------------------------
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


def run_ensemble(req: EnsembleRequest) -> dict[str, Any]:
    """Fuse, evaluate, search and write as ``req`` asks; return the results (the --json dict).

    Without a search the streams are read one at a time (memory: about three [N, K] arrays);
    a search holds all of them in one [S, N, K] array.
    """
    _check_request(req)
    searching = req.search or bool(req.search_on)
    with open_streams(req.scores, req.stream_names, req.intersect, req.labels) as data:
        attach_labels(data, req.labels)
        labelled = data.has_labels
        if not labelled and (data.labels >= 0).any():
            missing = data.names[data.labels < 0]
            raise MMCLError(
                f"{len(missing)} of {len(data.names)} samples have no label (first: {_first(missing)}); "
                "give --labels FILE or --data DIR --benchmark B"
            )
        if searching and not labelled:
            raise MMCLError(
                "--search needs labels: the score files carry none; give --labels FILE or --data DIR --benchmark B"
            )
        streams, y = data.streams, data.labels
        fixed = [("equal weights", np.ones(len(streams)), "fixed weights, no tuning")]
        if req.weights is not None:
            fixed.append(("given weights", parse_weights(req.weights, streams),
                          "fixed weights from --weights, no tuning"))

        results: dict[str, Any] = {
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

        # one pass over the streams: single-stream metrics and the fixed-weight fusions
        fused = [np.empty((len(data.names), data.num_classes), dtype=np.float32) for _ in fixed]
        stream_top1: list[np.ndarray] = []
        matrices = data.materialize(req.normalize) if searching else data.iter_scores(req.normalize)
        for s, matrix in enumerate(matrices):
            row: dict[str, Any] = {"name": streams[s], "file": str(data.files[s]), **_metric_row(None, None)}
            if labelled:
                t1, t5 = hits(matrix, y)
                stream_top1.append(t1)
                row.update(_metric_row(t1, t5))
            results["streams"].append(row)
            for acc, (_, weights, _) in zip(fused, fixed):
                accumulate_(acc, matrix, weights[s], first=s == 0)

        def add(name: str, weights: np.ndarray | None, scores: np.ndarray, protocol: str, **extra: Any) -> dict:
            entry: dict[str, Any] = {
                "name": name,
                "weights": None if weights is None else dict(zip(streams, map(float, weights))),
                "weights_arg": None if weights is None else format_weights(weights, streams),
                "protocol": protocol,
                "optimistic": False,
            }
            entry.update(extra)
            top1 = topk = None
            if labelled:
                top1, topk = hits(scores, y)
            entry.update(_metric_row(top1, topk))
            results["ensembles"].append(entry)
            return {"entry": entry, "fused": scores, "top1": top1}

        for acc, (name, weights, protocol) in zip(fused, fixed):
            final = add(name, weights, acc, protocol)
        del fused, acc
        if searching:
            final = {}  # the fixed-weight fusions are reported; free them before the search
        if req.search_on:
            final = _search_validation(req, data, add, results)
        elif req.search:
            final = _search_kfold(req, data, add, results)

    final_entry = final["entry"]
    results["final"] = final_entry["name"]
    results["weights_used"] = final_entry["weights_arg"]

    # per class, and the samples fixed or broken relative to the best single stream
    if labelled and stream_top1:
        best = int(np.argmax([t.mean() for t in stream_top1]))
        results["best_stream"] = streams[best]
        results.update(_per_class(y, stream_top1[best], final["top1"], data.num_classes, data.class_names))

    if req.out is not None:
        save_scores(req.out, data.names, final["fused"], data.labels, _out_meta(data, req, final_entry, results))
        results["out"] = str(req.out)
    return results


def _search_validation(req: EnsembleRequest, data: ScoreSet, add: Callable, results: dict) -> dict:
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
    if req.labels is not None:
        rule = LabelSource(req.labels.description, None, req.labels.label_of, origin=req.labels.origin)
        attach_labels(val, rule)
    if not val.has_labels:
        missing = val.names[val.labels < 0]
        raise MMCLError(
            f"--search-on: {len(missing)} validation samples have no label (first: {_first(missing)}); "
            "validation score files must carry labels, or their names must follow the --labels/--data rule"
        )
    overlap = np.isin(val.names, data.names)
    if overlap.any():
        raise MMCLError(
            f"--search-on: {int(overlap.sum())} validation samples are also test samples "
            f"(first: {_first(val.names[overlap])}); a validation set must be held out from the test set"
        )
    found = search_weights(val.scores, val.labels)
    files = ", ".join(str(p) for p in val.files)
    protocol = (
        f"weights searched on a validation set ({found.total} samples: {files}); "
        "the test labels were never used to choose them"
    )
    results["search"] = {
        "protocol": "validation",
        "method": "coordinate ascent, exact line search, weights in [0, 1]",
        "validation_files": [str(p) for p in val.files],
        "validation_samples": found.total,
        "validation_top1": found.correct / found.total,
        "rounds": found.rounds,
    }
    return add("searched (validation)", found.weights, fuse(data.scores, found.weights), protocol)


def _search_kfold(req: EnsembleRequest, data: ScoreSet, add: Callable, results: dict) -> dict:
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
        fold_top1 = float((fused[parts[f]].argmax(axis=1) == data.labels[parts[f]]).mean())
        fold_rows.append({
            "fold": f, "samples": int(len(parts[f])), "weights": dict(zip(data.streams, map(float, found.weights))),
            "weights_arg": format_weights(found.weights, data.streams), "top1": fold_top1,
            "search_top1": found.correct / found.total,
        })
    everything = search_weights(data.scores, data.labels, threats=threats)
    results["search"] = {
        "protocol": "kfold",
        "method": "coordinate ascent, exact line search, weights in [0, 1]",
        "folds": folds,
        "seed": req.seed,
        "fold_results": fold_rows,
    }
    honest = add(
        f"searched ({folds}-fold cross-fit)", None, fused,
        f"out-of-fold: each fold's weights were searched on the other {folds - 1} folds of these test samples",
    )
    add(
        "searched on all test samples", everything.weights, fuse(data.scores, everything.weights),
        "OPTIMISTIC: weights tuned on these same test labels; not a fair test accuracy",
        optimistic=True,
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


# --------------------------------------------------------------------------------------------
# Text report
# --------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render_report(results: dict[str, Any], per_class: bool = True) -> str:
    """The human-readable report: the accuracy table, weights, per-class table, fixes/breaks."""
    from tabulate import tabulate

    lines: list[str] = []
    head = (
        f"{len(results['streams'])} streams, {results['num_samples']:,} samples, "
        f"{results['num_classes']} classes; normalize: {results['normalize']}; "
        f"labels: {results['labels'] or 'none (fusion only, no accuracy)'}"
    )
    lines.append(head)
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    dropped = {f: d for f, d in results["intersect"]["dropped"].items() if d}
    if dropped:
        lines.append("--intersect dropped: " + ", ".join(f"{d:,} from {f}" for f, d in dropped.items()))
    rows = []
    for st in results["streams"]:
        rows.append([st["name"], _pct(st.get("top1")), _pct(st.get("top5")), "single stream", ""])
    for en in results["ensembles"]:
        weights = en["weights_arg"] or "per fold (below)"
        rows.append([en["name"], _pct(en.get("top1")), _pct(en.get("top5")), en["protocol"], weights])
    lines += ["", tabulate(rows, headers=["stream / ensemble", "top-1 %", "top-5 %", "protocol", "weights"],
                           disable_numparse=True, colalign=("left", "right", "right", "left", "left"))]

    search = results.get("search")
    if search and search["protocol"] == "kfold":
        frows = [[str(r["fold"]), str(r["samples"]), _pct(r["search_top1"]), _pct(r["top1"]), r["weights_arg"]]
                 for r in search["fold_results"]]
        lines += ["", f"Cross-fitting ({search['folds']} folds, seed {search['seed']}): "
                  "weights searched on the other folds, top-1 on the fold itself",
                  tabulate(frows, headers=["fold", "samples", "top-1 % (searched on)", "top-1 % (held out)", "weights"],
                           disable_numparse=True, colalign=("right", "right", "right", "right", "left"))]
    elif search:
        lines += ["", f"Validation top-1 with the searched weights: {_pct(search['validation_top1'])} % "
                  f"on {search['validation_samples']:,} samples (in-sample for the search)."]

    if results.get("weights_used"):
        lines += ["", f"Weights used ({results['final']}), to reuse: --weights {results['weights_used']}"]
    else:
        optimistic = [e for e in results["ensembles"] if e.get("optimistic")]
        lines += ["", f"Reported ensemble: {results['final']} (a different weight vector per fold)."]
        if optimistic:
            lines.append(
                "Weights searched on all test samples, for reuse on NEW data only "
                f"(their accuracy here is optimistic): --weights {optimistic[0]['weights_arg']}"
            )

    if per_class and results.get("per_class"):
        best = results["best_stream"]
        crow = []
        for r in results["per_class"]:
            label = f"{r['class']}" + (f" {r['name']}" if r.get("name") else "")
            delta = r["ensemble_top1"] - r["best_stream_top1"]
            crow.append([label, str(r["samples"]), _pct(r["best_stream_top1"]), _pct(r["ensemble_top1"]),
                         f"{100 * delta:+.2f}", str(r["fixed"]), str(r["broken"])])
        lines += ["", f"Per-class top-1: {results['final']} vs the best single stream ({best})",
                  tabulate(crow, headers=["class", "samples", f"{best} %", "ensemble %", "change", "fixed", "broken"],
                           disable_numparse=True, colalign=("left",) + ("right",) * 6)]
    if results.get("per_class") is not None:
        lines += ["", _fix_summary(results)]
    if results.get("out"):
        lines += ["", f"Fused scores written to {results['out']}"]
    return "\n".join(lines)


def _fix_summary(results: dict[str, Any]) -> str:
    rows = results["per_class"]

    def top(key: str) -> str:
        chosen = sorted((r for r in rows if r[key]), key=lambda r: -r[key])[:SHOWN]
        return ", ".join(f"{r['name'] or r['class']} ({r[key]})" for r in chosen) or "none"

    return (
        f"Against {results['best_stream']}, the ensemble fixes {results['fixed']:,} samples and breaks "
        f"{results['broken']:,} (net {results['fixed'] - results['broken']:+,}).\n"
        f"Most fixed classes: {top('fixed')}\nMost broken classes: {top('broken')}"
    )
