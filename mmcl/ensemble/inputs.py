"""Reading score files of either format and aligning them by sample name (never by row order)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mmcl.ensemble.fusion import CHUNK_ROWS, normalize_
from mmcl.ensemble.labels import LabelSource, merge_labels
from mmcl.errors import MMCLError
from mmcl.safe_pickle import safe_load
from mmcl.scores import ScoreFile, check_labels, open_npz, read_header, read_matrix, scores_shape

SHOWN = 5  # how many example names an error lists


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


def preview(names: np.ndarray | Sequence[str], n: int = SHOWN) -> str:
    """The first ``n`` names, comma-separated, for error messages."""
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
            f"{where}: {len(dup)} sample name(s) appear more than once (first: {preview(dup)}); "
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
        parts.append(f"{len(only_a)} of {a_label}'s are missing from {b_label} (first: {preview(only_a)}).")
    if len(only_b):
        parts.append(f"{len(only_b)} of {b_label}'s are not in {a_label} (first: {preview(only_b)}).")
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
            merge_labels(labels, label_from, file_labels, names, s, [str(p) for p in paths])
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
    """NaN or inf anywhere is an error naming the file, the sample and the class."""
    for start in range(0, len(matrix), CHUNK_ROWS * 4):
        block = matrix[start : start + CHUNK_ROWS * 4]
        finite = np.isfinite(block)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise MMCLError(
                f"{path}: sample {str(names[start + row])!r} has a non-finite score "
                f"({block[row, col]}) for class {col}; scores must be finite numbers"
            )
