"""Score files: the contract between ``mmcl test`` / training and ``mmcl ensemble``.

A score file is an ``.npz`` (DESIGN.md, "Score files") with

- ``names``:  unicode array [N], the sample names (rows are joined by name, never by order);
- ``scores``: float32 array [N, K] of raw logits;
- ``labels``: int64 array [N], the 0-based class, -1 where unknown;
- ``meta``:   a JSON string: dataset, benchmark, stream, model, checkpoint, class names, mmcl version.

This module needs NumPy only (no torch), so the ensemble command starts fast.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmcl import __version__
from mmcl.errors import MMCLError

KEYS = ("names", "scores", "labels", "meta")


@dataclass
class ScoreFile:
    """The content of one score file. ``names`` is a NumPy unicode array (cheap to align)."""

    names: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[1])

    def __len__(self) -> int:
        return len(self.names)


def save_scores(
    path: Path,
    names: Sequence[str],
    scores: np.ndarray,
    labels: np.ndarray | None,
    meta: dict,
) -> None:
    """Write a score file atomically (a temporary file in the same folder, then ``os.replace``).

    ``labels`` may be None (all unknown). ``meta`` gets ``mmcl_version`` when it has none.
    """
    path = Path(path)
    names_arr = np.asarray(list(names), dtype=str)
    scores_arr = np.asarray(scores)
    if scores_arr.ndim != 2 or scores_arr.shape[0] != len(names_arr):
        raise MMCLError(
            f"{path}: scores must be [N, K] with N = {len(names_arr)} names; got shape {scores_arr.shape}"
        )
    if not np.issubdtype(scores_arr.dtype, np.floating):
        raise MMCLError(f"{path}: scores must be floating point, got {scores_arr.dtype}")
    scores_arr = scores_arr.astype(np.float32, copy=False)
    if labels is None:
        labels_arr = np.full(len(names_arr), -1, dtype=np.int64)
    else:
        labels_arr = np.asarray(labels)
        if labels_arr.shape != (len(names_arr),) or not np.issubdtype(labels_arr.dtype, np.integer):
            raise MMCLError(
                f"{path}: labels must be an integer array [N = {len(names_arr)}]; "
                f"got {labels_arr.dtype} {labels_arr.shape}"
            )
        labels_arr = labels_arr.astype(np.int64, copy=False)
    meta = dict(meta)
    meta.setdefault("mmcl_version", __version__)
    meta_str = np.asarray(json.dumps(meta, sort_keys=True))

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, names=names_arr, scores=scores_arr, labels=labels_arr, meta=meta_str)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_scores(path: Path) -> ScoreFile:
    """Read and check a score file; every problem is an MMCLError naming the file and key."""
    path = Path(path)
    with open_npz(path) as npz:
        header = read_header(path, npz)
        scores = read_matrix(path, npz, len(header.names))
    check_labels(path, header.names, header.labels, scores.shape[1])
    header.scores = scores
    return header


def open_npz(path: Path) -> Any:
    """``np.load`` for a score file, without pickle, with a clear error for unreadable files."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MMCLError(f"{path}: no such score file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise MMCLError(f"{path}: not a readable .npz score file ({exc})") from None


def read_header(path: Path, npz: Any) -> ScoreFile:
    """names, labels and meta of an open score file; ``scores`` is left as an empty placeholder."""
    files = set(getattr(npz, "files", ()))
    missing = [k for k in KEYS if k not in files]
    if missing:
        raise MMCLError(
            f"{path}: not an mmcl score file: missing key(s) {missing} "
            f"(expected {list(KEYS)}, found {sorted(files)})"
        )
    names = _get(path, npz, "names")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise MMCLError(f"{path}: 'names' must be a 1-D string array, got {names.dtype} {names.shape}")
    if names.dtype.kind == "S":
        names = names.astype(str)
    labels = _get(path, npz, "labels")
    if labels.shape != names.shape or not np.issubdtype(labels.dtype, np.integer):
        raise MMCLError(
            f"{path}: 'labels' must be an integer array [N = {len(names)}], "
            f"got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64, copy=False)
    if len(labels) and labels.min() < -1:
        bad = int(np.flatnonzero(labels < -1)[0])
        raise MMCLError(f"{path}: sample {str(names[bad])!r} has label {labels[bad]}; use -1 for unknown")
    meta_arr = _get(path, npz, "meta")
    try:
        meta = json.loads(str(meta_arr.item()) if meta_arr.ndim == 0 else str(meta_arr))
    except (ValueError, TypeError) as exc:
        raise MMCLError(f"{path}: 'meta' is not a JSON string ({exc})") from None
    if not isinstance(meta, dict):
        raise MMCLError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return ScoreFile(names=names, scores=np.empty((0, 0), np.float32), labels=labels, meta=meta)


def read_matrix(path: Path, npz: Any, num: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``scores`` array of an open score file, checked to be float [num, K], as float32.

    What ``save_scores`` writes is read straight into ``out`` when given (see :func:`_get`).
    """
    scores = _get(path, npz, "scores", out)
    if scores.ndim != 2 or scores.shape[0] != num:
        raise MMCLError(f"{path}: 'scores' must be [N = {num}, K], got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise MMCLError(f"{path}: 'scores' must be float32 logits, got {scores.dtype}")
    return scores.astype(np.float32, copy=False)


def scores_shape(path: Path, npz: Any) -> tuple[int, ...]:
    """Shape of the ``scores`` member, from its header when possible (without reading it)."""
    stored = _stored_member(path, "scores.npy")
    return tuple(stored.shape) if stored is not None else tuple(_get(path, npz, "scores").shape)


@dataclass(frozen=True)
class _Stored:
    """Where an uncompressed ``.npy`` member's data lies inside the ``.npz`` file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    nbytes: int


def _stored_member(path: Path, member: str) -> _Stored | None:
    """Locate an uncompressed ``.npy`` member's data; None where that is not possible."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.hasobject or offset + nbytes > start + info.file_size:
            return None
        return _Stored(offset, tuple(shape), dtype, bool(fortran), nbytes)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile, struct.error):
        return None  # the ordinary reader gives the precise error


def check_labels(path: Path, names: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Labels must be -1 (unknown) or a class index below ``num_classes``."""
    if len(labels) and labels.max() >= num_classes:
        bad = int(np.flatnonzero(labels >= num_classes)[0])
        raise MMCLError(
            f"{path}: sample {str(names[bad])!r} has label {labels[bad]}, "
            f"but the scores have only {num_classes} classes"
        )


def _get(path: Path, npz: Any, key: str, out: np.ndarray | None = None) -> np.ndarray:
    """One array of a score file.

    An uncompressed member in native byte order (what ``save_scores`` writes) is read with a
    single ``readinto`` (into ``out`` when it fits): no zip CRC pass and no extra copy, which
    makes loading several large files fast. Anything else goes through ``np.load``.
    """
    stored = _stored_member(path, f"{key}.npy")
    if stored is not None and not stored.fortran and stored.dtype.isnative:
        if out is None or out.shape != stored.shape or out.dtype != stored.dtype or not out.flags.c_contiguous:
            out = np.empty(stored.shape, dtype=stored.dtype)
        with open(path, "rb") as fh:
            fh.seek(stored.offset)
            got = fh.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != stored.nbytes:
            raise MMCLError(f"{path}: {key!r} is truncated ({got} of {stored.nbytes} bytes)")
        return out
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise MMCLError(f"{path}: key {key!r} cannot be read without pickle ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MMCLError(f"{path}: key {key!r} is unreadable or truncated ({exc})") from None
