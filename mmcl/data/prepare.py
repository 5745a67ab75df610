"""The ``mmcl prepare`` pipeline: raw recordings -> a prepared dataset directory.

One pipeline serves every source (:class:`~mmcl.data.sources.DatasetSource`): discover the raw
files, skip those the source excludes up front (e.g. the official missing-skeleton lists), read
the rest in a process pool (ordered, so the output order is the file order whatever the worker
count), stream each sample into a :class:`~mmcl.data.store.DatasetWriter` (the dataset is never
held in memory), list bad samples in ``rejected.csv`` and go on, compute the splits, and move
the finished folder into place. Any error or Ctrl-C leaves neither the output nor a temporary
folder behind.

:func:`import_ctrgcn_npz` converts an existing CTR-GCN ``NTU60_CS.npz``-style file instead.
"""

from __future__ import annotations

import csv
import ctypes
import functools
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mmcl.data.sources import DatasetSource, SampleError
from mmcl.data.store import DatasetWriter, Sample
from mmcl.errors import MMCLError

# An optional step run on the finished temporary folder before it is moved into place (used for
# RGB strips). It returns (name, reason) pairs for samples it could not handle, which are added to
# rejected.csv; those samples stay in the dataset.
Extras = Callable[[Path], "Sequence[tuple[str, str]] | None"]

UNEXPECTED = "unexpected error (please report it)"


@dataclass
class PrepareSummary:
    """What a prepare run produced; :meth:`rows` renders it for the command line."""

    dataset: str
    out: Path
    files: int = 0  # raw files found
    samples: int = 0  # samples written
    frames: int = 0  # valid frames written, all samples
    actors: dict[int, int] = field(default_factory=dict)  # {actors per sample: samples}
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # {benchmark: {part: n}}
    rejected: int = 0  # samples excluded for bad input (rejected.csv)
    unexpected: int = 0  # of those, rejected because of an unexpected error
    skipped: dict[str, int] = field(default_factory=dict)  # {reason: files skipped up front}
    extra_rejected: int = 0  # samples kept but reported by the extras step (e.g. no RGB strip)
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def rows(self) -> list[tuple[str, Any]]:
        """(label, value) rows for a two-column table."""
        rows: list[tuple[str, Any]] = [("dataset", f"{self.dataset} -> {self.out}"), ("raw files", self.files)]
        for reason, n in self.skipped.items():
            rows.append((f"skipped: {reason}", n))
        rows.append(("rejected (see rejected.csv)", self.rejected))
        if self.unexpected:
            rows.append((f"  of which {UNEXPECTED}", self.unexpected))
        rows.append(("samples", self.samples))
        for benchmark, parts in self.splits.items():
            rows.append((f"{benchmark}: train / test", f"{parts.get('train', 0)} / {parts.get('test', 0)}"))
        rows.append(("frames", self.frames))
        for n in sorted(self.actors):
            rows.append((f"samples with {n} actor{'s' if n > 1 else ''}", self.actors[n]))
        if self.extra_rejected:
            rows.append(("reported by the RGB step (rejected.csv)", self.extra_rejected))
        rate = f" ({self.files / self.seconds:.0f} files/s)" if self.seconds > 0 and self.files else ""
        rows.append(("time", f"{self.seconds:.1f} s{rate}"))
        return rows


def prepare_dataset(
    source: DatasetSource,
    raw: Path | str,
    out: Path | str,
    *,
    workers: int = 1,
    overwrite: bool = False,
    extras: Extras | None = None,
    progress: bool = True,
) -> PrepareSummary:
    """Prepare the raw files of ``source`` found under ``raw`` into the dataset folder ``out``."""
    started = time.perf_counter()
    raw, out = Path(raw), Path(out)
    _check_out(out, overwrite, raw)
    files = source.discover(raw)
    summary = PrepareSummary(dataset=source.name, out=out, files=len(files))
    tasks: list[Path] = []
    skipped: Counter[str] = Counter()
    for path in files:
        reason = source.skip_reason(source.sample_name(path))
        if reason is None:
            tasks.append(path)
        else:
            skipped[reason] += 1
    summary.skipped = dict(skipped)
    if not tasks:
        raise MMCLError(
            f"nothing to prepare in {raw}: all {len(files)} {source.name} files are skipped "
            f"({'; '.join(f'{n} {r}' for r, n in skipped.items())})"
        )

    options = getattr(source, "options", lambda: {})()
    created = _missing_parents(out)
    writer = DatasetWriter(
        out,
        name=source.name,
        layout=source.layout,
        num_person=source.num_person,
        channels=source.channels,
        class_names=source.class_names,
        has_colors=source.has_colors,
        meta_fields=source.meta_fields,
        source={"kind": source.name, "raw": str(raw), "options": options, "skipped": dict(skipped)},
        overwrite=overwrite,
        frame_index=getattr(source, "has_frame_index", False),
    )
    results = _read_all(source, tasks, workers)
    try:
        names: list[str] = []
        actors: Counter[int] = Counter()
        bar = _progress(len(tasks), f"prepare {source.name}", progress)
        for path, sample, reason in results:
            bar.update()
            if sample is None:
                writer.reject(source.sample_name(path), path.name, reason)
                summary.unexpected += reason.startswith(UNEXPECTED)
                continue
            writer.add(sample)
            names.append(sample.name)
            summary.frames += len(sample.joints)
            actors[sample.bodies] += 1
        bar.close()
        summary.rejected = len(writer.rejected)
        summary.samples, summary.actors = len(names), dict(sorted(actors.items()))
        if not names:
            raise MMCLError(
                f"no sample of {raw} could be prepared: all {len(tasks)} files were rejected; "
                f"first reason: {writer.rejected[0][2]}"
            )
        splits = source.splits(names)
        summary.splits = {b: {part: len(v) for part, v in parts.items()} for b, parts in splits.items()}
        writer.write_index(splits)
        if extras is not None:
            reported = list(extras(writer.tmp_dir) or ())
            summary.extra_rejected = len(reported)
            _append_rejected(writer.tmp_dir / "rejected.csv", reported)
        writer.commit()
    except BaseException:
        results.close()  # stops the worker pool now, not when the traceback is dropped
        writer.abort()
        _remove_empty(created)
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def _read_one(source: DatasetSource, path: Path) -> tuple[Path, Sample | None, str]:
    """Read one raw file in a worker: the sample, or None and the reason it is rejected."""
    try:
        return path, source.read(path), ""
    except SampleError as exc:
        return path, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a long run
        return path, None, f"{UNEXPECTED}: {path.name}: {type(exc).__name__}: {exc}"


def _read_all(source: DatasetSource, tasks: list[Path], workers: int) -> Iterator[tuple[Path, Sample | None, str]]:
    """Results in task order; ``workers`` processes (1: this process).

    A worker that dies (killed, out of memory) ends the run with an error instead of leaving it
    waiting forever for the files that worker held, as ``multiprocessing.Pool`` would.
    """
    read = functools.partial(_read_one, source)
    if workers <= 1 or len(tasks) < 2:
        yield from map(read, tasks)
        return
    chunk = max(1, min(32, len(tasks) // (workers * 16)))
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context(), initializer=_init_worker)
    try:
        yield from pool.map(read, tasks, chunksize=chunk)
    except BrokenProcessPool:
        raise MMCLError(
            "a prepare worker process died (killed, or out of memory?) while reading the raw files; "
            "nothing was written. Run the command again, with fewer --workers if memory is short"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error: drop the queued files


def _init_worker() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and cleans up. They also keep
    freed memory for reuse: by default glibc maps every array over 128 KiB afresh and unmaps it
    when freed, so each sample paid page faults for its temporaries again (about 1.5x slower).
    Only these short-lived worker processes are tuned; elsewhere this is a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: arrays below 64 MiB come from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap
    except (OSError, AttributeError):
        pass


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, file=sys.stderr, mininterval=0.5)


def _check_out(out: Path, overwrite: bool, raw: Path | None = None) -> None:
    if out.exists() and not overwrite:
        raise MMCLError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise MMCLError(f"{out} exists and is not a folder; choose another --out")
    if raw is not None and raw.exists():
        r, o = raw.resolve(), out.resolve()
        if r == o or o in r.parents:
            raise MMCLError(f"--out {out} would replace the raw data in {raw}; choose another folder")


def _missing_parents(out: Path) -> list[Path]:
    """Ancestors of ``out`` that do not exist yet (deepest first), to remove again on failure."""
    missing = []
    for parent in Path(os.path.abspath(out)).parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _append_rejected(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    if rows:
        with open(path, "a", newline="") as fh:
            csv.writer(fh).writerows((name, "", reason) for name, reason in rows)


# ----------------------------------------------------------------------------------------------
# Importing CTR-GCN's NTU60_CS.npz-style files
# ----------------------------------------------------------------------------------------------
_BENCHMARK_TOKENS = {"CSUB": "xsub", "CSET": "xset", "CS": "xsub", "CV": "xview", "XSUB": "xsub", "XSET": "xset", "XVIEW": "xview"}
_ROWS_PER_READ = 64


def infer_benchmark(path: Path | str) -> str | None:
    """The benchmark a CTR-GCN file name encodes: NTU60_CS -> xsub, NTU60_CV -> xview,
    NTU120_CSub -> xsub, NTU120_CSet -> xset; None when the name says nothing."""
    for token in re.split(r"[^A-Za-z0-9]+", Path(path).name):
        if token.upper() in _BENCHMARK_TOKENS:
            return _BENCHMARK_TOKENS[token.upper()]
    return None


def import_ctrgcn_npz(
    npz_path: Path | str,
    out: Path | str,
    dataset: str,
    names_file: Path | str | None = None,
    *,
    benchmark: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Convert a CTR-GCN ``.npz`` (``x_train``/``x_test`` float32 (N, T, 150), column =
    75*actor + 3*joint + coord; one-hot ``y_train``/``y_test``) into a prepared dataset.

    Valid frames are the rows up to the last non-zero one. The arrays are streamed from the
    zip member in blocks of rows (never unpickled, never loaded whole). Sample names come from
    ``names_file`` (one per line: the x_train rows, then the x_test rows); without it they are
    placeholders ``ctrgcn-train-000000`` and the dataset has only the file's own benchmark.
    """
    from mmcl.data.naming import ntu_label, parse_ntu_name
    from mmcl.data.ntu import Ntu60Source, Ntu120Source
    from mmcl.data.splits import benchmarks, split_names

    started = time.perf_counter()
    npz_path, out = Path(npz_path), Path(out)
    sources = {"ntu60": Ntu60Source, "ntu120": Ntu120Source}
    if dataset not in sources:
        raise MMCLError(f"--from-ctrgcn-npz imports NTU files only (ntu60 or ntu120), not {dataset!r}")
    source = sources[dataset]()
    benchmark = benchmark or infer_benchmark(npz_path)
    if benchmark is None:
        raise MMCLError(
            f"cannot tell the benchmark from the file name {npz_path.name} (expected CS, CV, CSub "
            f"or CSet in it, as in NTU60_CS.npz); pass --benchmark, one of {benchmarks(dataset)}"
        )
    if benchmark not in benchmarks(dataset):
        raise MMCLError(f"{npz_path.name}: benchmark {benchmark!r} is not one of {dataset}'s {benchmarks(dataset)}")
    _check_out(out, overwrite)
    if not npz_path.is_file():
        raise MMCLError(f"{npz_path} does not exist (expected a CTR-GCN .npz such as NTU60_CS.npz)")

    with _NpzReader(npz_path) as npz:
        parts = {part: npz.member(f"x_{part}") for part in ("train", "test")}
        labels = {part: _labels(npz.small(f"y_{part}"), parts[part][1][0], part, npz_path, source.num_classes) for part in parts}
        counts = {part: parts[part][1][0] for part in parts}
        names = _npz_names(names_file, counts)
        real = names_file is not None
        if real:
            for part, part_names in names.items():
                for name, label in zip(part_names, labels[part]):
                    try:
                        expected = ntu_label(name)
                    except MMCLError as exc:
                        raise MMCLError(f"{names_file}: {exc}") from None
                    if expected != label:
                        raise MMCLError(
                            f"{names_file}: sample {name} is action A{expected + 1:03d}, but its "
                            f"row in {npz_path.name} (x_{part}) has label {label} (A{label + 1:03d}); "
                            "the names file must list the x_train rows, then the x_test rows"
                        )
            rule_train, _ = split_names(dataset, benchmark, sorted(names["train"] + names["test"]))
            moved = set(names["train"]) ^ set(rule_train)
            if moved:
                raise MMCLError(
                    f"{names_file}: sample {sorted(moved)[0]} is on the wrong side of the "
                    f"{benchmark} split for {npz_path.name}; do the names match the file's rows?"
                )
        created = _missing_parents(out)
        writer = DatasetWriter(
            out,
            name=dataset,
            layout=source.layout,
            num_person=source.num_person,
            channels=source.channels,
            class_names=source.class_names,
            has_colors=False,
            meta_fields=source.meta_fields,
            source={
                "kind": "ctrgcn-npz",
                "file": str(npz_path),
                "benchmark": benchmark,
                "names": str(names_file) if real else "placeholders (row order; no names file given)",
            },
            overwrite=overwrite,
        )
        summary = PrepareSummary(dataset=dataset, out=out, files=sum(counts.values()))
        try:
            kept: dict[str, list[str]] = {"train": [], "test": []}
            actors: Counter[int] = Counter()
            bar = _progress(summary.files, f"import {npz_path.name}", progress)
            for part, (fh, shape) in parts.items():
                n, t, width = shape
                for lo in range(0, n, _ROWS_PER_READ):
                    block = _read_rows(fh, min(_ROWS_PER_READ, n - lo), shape, npz_path, part)
                    nonzero = block.any(axis=2)  # (rows, T)
                    for i in range(len(block)):
                        name = names[part][lo + i]
                        bar.update()
                        rows = np.flatnonzero(nonzero[i])
                        if len(rows) == 0:
                            writer.reject(name, npz_path.name, f"x_{part} row {lo + i}: all {t} frames are zero")
                            continue
                        joints = block[i, : rows[-1] + 1].reshape(-1, 2, 25, 3)
                        bodies = 1 + int(np.any(joints[:, 1] != 0))
                        meta = {}
                        if real:
                            fields = parse_ntu_name(name)
                            meta = {k: fields[k] for k in ("setup", "camera", "subject", "replication")}
                        writer.add(Sample(name, int(labels[part][lo + i]), joints, None, bodies, meta))
                        kept[part].append(name)
                        summary.frames += len(joints)
                        actors[bodies] += 1
            bar.close()
            splits = {benchmark: kept}
            if real:
                everything = sorted(kept["train"] + kept["test"])
                for other in benchmarks(dataset):
                    if other != benchmark:
                        train, test = split_names(dataset, other, everything)
                        splits[other] = {"train": train, "test": test}
            summary.samples = len(kept["train"]) + len(kept["test"])
            summary.rejected = len(writer.rejected)
            summary.actors = dict(sorted(actors.items()))
            summary.splits = {b: {p: len(v) for p, v in s.items()} for b, s in splits.items()}
            writer.write_index(splits)
            writer.commit()
        except BaseException:
            writer.abort()
            _remove_empty(created)
            raise
    summary.seconds = time.perf_counter() - started
    return summary


class _NpzReader:
    """Reads the members of an ``.npz`` without pickle: headers via ``numpy.lib.format``, big
    arrays streamed in row blocks (works for stored and compressed members alike)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise MMCLError(f"{path}: not a readable .npz file ({exc})") from None
        self.keys = [n[: -len(".npy")] for n in self.zip.namelist() if n.endswith(".npy")]
        self.open: list[Any] = []

    def __enter__(self) -> "_NpzReader":
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in self.open:
            fh.close()
        self.zip.close()

    def member(self, key: str) -> tuple[Any, tuple[int, ...]]:
        """An open stream positioned at the data of a float (N, T, 150) array, and its shape."""
        fh, shape, dtype = self._header(key)
        if len(shape) != 3 or shape[2] != 150 or dtype.kind != "f":
            raise MMCLError(
                f"{self.path}: {key} has shape {shape} and dtype {dtype}; expected float (N, T, 150) "
                "as CTR-GCN writes it (column = 75*actor + 3*joint + coord)"
            )
        fh.dtype = dtype  # type: ignore[attr-defined]
        return fh, shape

    def small(self, key: str) -> np.ndarray:
        fh, shape, dtype = self._header(key)
        data = fh.read()
        count = int(np.prod(shape))
        if len(data) < count * dtype.itemsize:
            raise MMCLError(f"{self.path}: {key} is truncated")
        return np.frombuffer(data, dtype, count).reshape(shape)

    def _header(self, key: str) -> tuple[Any, tuple[int, ...], np.dtype]:
        if key not in self.keys:
            raise MMCLError(
                f"{self.path}: no array {key!r}; a CTR-GCN file holds x_train, y_train, x_test, "
                f"y_test (this one holds {sorted(self.keys)})"
            )
        fh = self.zip.open(key + ".npy")
        self.open.append(fh)
        try:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
        except ValueError as exc:
            raise MMCLError(f"{self.path}: {key} is not a valid .npy member ({exc})") from None
        if dtype.hasobject:
            raise MMCLError(f"{self.path}: {key} holds Python objects; mmcl never unpickles data files")
        if fortran and len(shape) > 1:
            raise MMCLError(f"{self.path}: {key} is stored in Fortran order; expected C order")
        return fh, tuple(shape), dtype


def _read_rows(fh: Any, rows: int, shape: tuple[int, ...], path: Path, part: str) -> np.ndarray:
    per_row = int(np.prod(shape[1:])) * fh.dtype.itemsize
    data = fh.read(rows * per_row)
    if len(data) != rows * per_row:
        raise MMCLError(f"{path}: x_{part} is truncated")
    return np.frombuffer(data, fh.dtype).reshape(rows, *shape[1:]).astype(np.float32)


def _labels(y: np.ndarray, n: int, part: str, path: Path, num_classes: int) -> np.ndarray:
    """0-based labels from one-hot (N, K) rows or from (N,) integers."""
    if len(y) != n:
        raise MMCLError(f"{path}: y_{part} has {len(y)} rows but x_{part} has {n}")
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise MMCLError(f"{path}: y_{part} has {y.shape[1]} classes; expected {num_classes}")
        labels = y.argmax(axis=1)
        bad = np.flatnonzero((y != 0).sum(axis=1) != 1)
        if len(bad):
            raise MMCLError(f"{path}: y_{part} row {bad[0]} is not one-hot")
    elif y.ndim == 1:
        labels = y.astype(np.int64)
    else:
        raise MMCLError(f"{path}: y_{part} has shape {y.shape}; expected one-hot (N, K) or labels (N,)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise MMCLError(f"{path}: y_{part} has labels outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _npz_names(names_file: Path | str | None, counts: dict[str, int]) -> dict[str, list[str]]:
    if names_file is None:
        return {part: [f"ctrgcn-{part}-{i:06d}" for i in range(n)] for part, n in counts.items()}
    path = Path(names_file)
    if not path.is_file():
        raise MMCLError(f"--names {path} does not exist (one sample name per line: train rows, then test rows)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    total = counts["train"] + counts["test"]
    if len(names) != total:
        raise MMCLError(
            f"{path} lists {len(names)} names; the npz has {counts['train']} train + "
            f"{counts['test']} test = {total} rows (one name per row: train rows, then test rows)"
        )
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise MMCLError(f"{path}: sample {dupes[0]} is listed twice")
    return {"train": names[: counts["train"]], "test": names[counts["train"] :]}

