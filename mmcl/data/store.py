"""The prepared-dataset directory: memory-mapped ragged skeleton arrays, a sample index, splits.

Layout of a dataset directory (see DESIGN.md, "Prepared dataset directory")::

    dataset.json   name, skeleton layout, channels, max bodies, class names, benchmarks,
                   mmcl version, source, and each array's file, dtype and shape
    joints.npy     float32 (total_frames, M, V, C): every sample's valid frames, back to back
    colors.npy     float32 (total_frames, M, V, 2): colour-image coordinates (when the source has them)
    frame_index.npy int32 (total_frames,): raw (video) frame of each stored frame (when the source knows it)
    samples.csv    one row per sample: name, label, offset, frames, bodies, then metadata fields
    splits.json    {benchmark: {"train": [names], "test": [names]}}
    rejected.csv   samples excluded while preparing, with the file and reason
    rgb/           optional JPEG strips, one per sample
    features/      optional feature files (.npz), see mmcl.data.features

Arrays are written by appending, so preparing never holds the dataset in memory, and read
through ``np.load(mmap_mode="r")``, so training never loads it whole either.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

import numpy as np

from mmcl import __version__
from mmcl.errors import MMCLError
from mmcl.graphs import Layout

FORMAT = "mmcl-dataset"
FORMAT_VERSION = 1
_HEADER_BYTES = 256  # fixed .npy header size, so the final shape can be written in place


@dataclass
class Sample:
    """One prepared sample, as produced by a dataset reader."""

    name: str
    label: int
    joints: np.ndarray  # float32 (T, M, V, C)
    colors: np.ndarray | None = None  # float32 (T, M, V, 2)
    bodies: int = 1
    meta: dict[str, int] = field(default_factory=dict)
    frame_index: np.ndarray | None = None  # int (T,): the raw (video) frame of each kept frame


class NpyAppender:
    """Write a ``.npy`` file row block by row block, without knowing the row count up front."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: str = "<f4") -> None:
        self.path = path
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._fh: BinaryIO = open(path, "wb")
        self._write_header()

    def _write_header(self) -> None:
        header = {"descr": self.dtype.str, "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        text = repr(header).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise MMCLError(f"{self.path}: array shape too large for the fixed .npy header")
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little"))
        self._fh.write(text + b" " * pad + b"\n")

    def append(self, block: np.ndarray) -> int:
        """Append rows; return the row offset where they start."""
        if block.shape[1:] != self.row_shape:
            raise MMCLError(f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        offset = self.rows
        self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]
        return offset

    def close(self) -> dict[str, Any]:
        """Finalize the header with the real row count; return the array's contract entry."""
        self._write_header()
        self._fh.close()
        return {"file": self.path.name, "dtype": self.dtype.name, "shape": [self.rows, *self.row_shape]}


class DatasetWriter:
    """Build a dataset directory atomically: everything goes to a temporary sibling folder,
    which replaces ``out`` only when :meth:`finish` succeeds."""

    def __init__(
        self,
        out: Path,
        *,
        name: str,
        layout: Layout,
        num_person: int,
        channels: int,
        class_names: Sequence[str],
        has_colors: bool,
        meta_fields: Sequence[str],
        source: Mapping[str, Any],
        overwrite: bool = False,
        frame_index: bool = False,
    ) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise MMCLError(f"{self.out} already exists; pass --overwrite to replace it")
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.name, self.layout, self.num_person, self.channels = name, layout, num_person, channels
        self.class_names = list(class_names)
        self.meta_fields = list(meta_fields)
        self.source = dict(source)
        row = (num_person, layout.num_joints)
        self._joints = NpyAppender(self.tmp / "joints.npy", (*row, channels))
        self._colors = NpyAppender(self.tmp / "colors.npy", (*row, 2)) if has_colors else None
        self._frame_index = NpyAppender(self.tmp / "frame_index.npy", (), "<i4") if frame_index else None
        self._rows: list[list[Any]] = []
        self._names: set[str] = set()
        self.rejected: list[tuple[str, str, str]] = []

    @property
    def tmp_dir(self) -> Path:
        """The folder being written (for optional extras such as ``rgb/``)."""
        return self.tmp

    @property
    def num_samples(self) -> int:
        return len(self._rows)

    def add(self, sample: Sample) -> None:
        """Append one sample's frames and its index row."""
        t, m, v, c = sample.joints.shape
        if (m, v, c) != (self.num_person, self.layout.num_joints, self.channels):
            raise MMCLError(
                f"sample {sample.name}: joints of shape (T, {m}, {v}, {c}), "
                f"expected (T, {self.num_person}, {self.layout.num_joints}, {self.channels})"
            )
        if sample.name in self._names:
            raise MMCLError(f"sample {sample.name} appears twice in the source")
        if not 0 <= sample.label < len(self.class_names):
            raise MMCLError(f"sample {sample.name}: label {sample.label} outside 0..{len(self.class_names) - 1}")
        self._names.add(sample.name)
        offset = self._joints.append(sample.joints)
        if self._colors is not None:
            colors = sample.colors if sample.colors is not None else np.zeros((t, m, v, 2), np.float32)
            self._colors.append(colors)
        if self._frame_index is not None:
            if sample.frame_index is None or len(sample.frame_index) != t:
                raise MMCLError(f"sample {sample.name}: frame_index must give the raw frame of each of its {t} frames")
            self._frame_index.append(np.asarray(sample.frame_index))
        self._rows.append(
            [sample.name, sample.label, offset, t, sample.bodies]
            + [sample.meta.get(k, -1) for k in self.meta_fields]
        )

    def reject(self, name: str, file: str, reason: str) -> None:
        """Record a sample that was excluded, with its reason."""
        self.rejected.append((name, file, reason))

    def finish(self, splits: Mapping[str, Mapping[str, Sequence[str]]]) -> Path:
        """Write the index, splits and dataset.json, then move the folder into place."""
        self.write_index(splits)
        return self.commit()

    def write_index(self, splits: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        """Close the arrays and write samples.csv, rejected.csv, splits.json and dataset.json into
        the temporary folder. It is then a readable dataset (``open_dataset(writer.tmp_dir)``), so
        extras such as RGB strips can be built from it before :meth:`commit`."""
        arrays = {"joints": self._joints.close()}
        if self._colors is not None:
            arrays["colors"] = self._colors.close()
        if self._frame_index is not None:
            arrays["frame_index"] = self._frame_index.close()
        with open(self.tmp / "samples.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "label", "offset", "frames", "bodies", *self.meta_fields])
            writer.writerows(self._rows)
        with open(self.tmp / "rejected.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "file", "reason"])
            writer.writerows(self.rejected)
        _write_json(self.tmp / "splits.json", {b: {"train": list(s["train"]), "test": list(s["test"])} for b, s in splits.items()})
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "layout": self.layout.to_json(),
            "channels": self.channels,
            "max_bodies": self.num_person,
            "num_samples": len(self._rows),
            "class_names": self.class_names,
            "benchmarks": list(splits),
            "meta_fields": self.meta_fields,
            "arrays": arrays,
            "mmcl_version": __version__,
            "source": self.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(self.tmp / "dataset.json", info)

    def commit(self) -> Path:
        """Move the finished temporary folder into place (replacing any old dataset)."""
        _replace_dir(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Remove the temporary folder (after an error); ``out`` is left untouched."""
        for appender in (self._joints, self._colors, self._frame_index):
            if appender is not None and not appender._fh.closed:
                appender._fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with no window where neither exists
    half-written: the old folder is renamed aside first and deleted last."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class SampleInfo:
    """One row of the sample index."""

    name: str
    label: int
    offset: int
    frames: int
    bodies: int
    meta: dict[str, int]


class SkeletonDataset:
    """Read-only view of a prepared dataset directory. Arrays stay memory-mapped; the object
    pickles cheaply (DataLoader workers reopen the maps)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        info_path = self.path / "dataset.json"
        if not info_path.is_file():
            raise MMCLError(
                f"{self.path} is not a prepared dataset: {info_path.name} is missing "
                "(build one with `mmcl prepare`)"
            )
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        if self.info.get("format") != FORMAT:
            raise MMCLError(f"{info_path}: not an mmcl dataset (format={self.info.get('format')!r})")
        self.layout = Layout.from_json(self.info["layout"])
        self.class_names: list[str] = list(self.info["class_names"])
        self.samples: list[SampleInfo] = _read_index(self.path / "samples.csv")
        self.names: list[str] = [s.name for s in self.samples]
        self.labels: np.ndarray = np.array([s.label for s in self.samples], dtype=np.int64)
        self._by_name = {s.name: s for s in self.samples}
        self._splits: dict[str, dict[str, list[str]]] | None = None
        self._maps: dict[str, np.ndarray] = {}

    # -- metadata -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def num_person(self) -> int:
        return int(self.info["max_bodies"])

    @property
    def channels(self) -> int:
        return int(self.info["channels"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_colors(self) -> bool:
        return "colors" in self.info["arrays"]

    @property
    def splits(self) -> dict[str, dict[str, list[str]]]:
        if self._splits is None:
            self._splits = json.loads((self.path / "splits.json").read_text())
        return self._splits

    def split(self, benchmark: str, part: str) -> list[str]:
        """Names of one split part ("train" or "test"), with a clear error for unknown names."""
        if benchmark not in self.splits:
            raise MMCLError(
                f"{self.path}: no benchmark {benchmark!r}; this dataset has {sorted(self.splits)}"
            )
        if part not in self.splits[benchmark]:
            raise MMCLError(f"{self.path}: benchmark {benchmark!r} has no {part!r} split")
        return self.splits[benchmark][part]

    def info_of(self, name: str) -> SampleInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise MMCLError(f"{self.path}: no sample named {name!r}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- arrays ---------------------------------------------------------------------------
    def _array(self, key: str) -> np.ndarray:
        arr = self._maps.get(key)
        if arr is None:
            entry = self.info["arrays"][key]
            arr = np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != list(entry["shape"]):
                raise MMCLError(
                    f"{self.path / entry['file']}: shape {arr.shape}, dataset.json says {tuple(entry['shape'])}"
                )
            self._maps[key] = arr
        return arr

    def joints(self, name: str) -> np.ndarray:
        """float32 (T, M, V, C): the sample's valid frames (a copy; the file stays mapped)."""
        s = self.info_of(name)
        return np.array(self._array("joints")[s.offset : s.offset + s.frames])

    def colors(self, name: str) -> np.ndarray | None:
        """float32 (T, M, V, 2) colour-image coordinates, or None where the source has none."""
        if not self.has_colors:
            return None
        s = self.info_of(name)
        return np.array(self._array("colors")[s.offset : s.offset + s.frames])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def _read_index(path: Path) -> list[SampleInfo]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        fixed = ["name", "label", "offset", "frames", "bodies"]
        if header[:5] != fixed:
            raise MMCLError(f"{path}: header {header[:5]}, expected {fixed}")
        extra = header[5:]
        out = []
        for row in reader:
            out.append(
                SampleInfo(row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]),
                           {k: int(v) for k, v in zip(extra, row[5:])})
            )
    return out


def open_dataset(path: Path | str) -> SkeletonDataset:
    """Open a prepared dataset directory (the output of ``mmcl prepare``)."""
    return SkeletonDataset(path)


def read_rejected(path: Path | str) -> list[dict[str, str]]:
    """The rejected samples of a dataset: rows with name, file and reason."""
    with open(Path(path) / "rejected.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def iter_split(ds: SkeletonDataset, benchmark: str, part: str) -> Iterable[tuple[str, np.ndarray]]:
    """Yield (name, joints) for one split part."""
    for name in ds.split(benchmark, part):
        yield name, ds.joints(name)
