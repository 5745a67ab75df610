"""Sharded, resumable batch processing with atomic chunk files, merged at the end.

One run of ``mmcl extract-text`` (one process, or N processes under ``accelerate launch``):

1. the main process creates ``<out dir>/.<out name>.partial/`` and records the run's settings
   there (``run.json``); a restart with other settings is refused (``--restart`` discards);
2. every process lists the samples already finished (the chunk files present), then waits for
   the others, so nobody writes before everybody has read;
3. process ``r`` of ``N`` takes ``todo[r::N]`` (disjoint shards) and, every ``flush_every``
   samples, writes a chunk file atomically (temporary name, then ``os.replace``);
4. after a barrier the main process merges all chunks (each sample exactly once, in dataset
   order), hands them to ``finish`` (which writes the outputs atomically) and removes the folder.

A kill at any moment leaves only complete chunk files (and no output, or the old one), so the
next run resumes where this one stopped. Several machines need the output folder on a shared
file system.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mmcl.errors import MMCLError

# process a batch: (names, inputs) -> (features float32 (B, D), one JSON-able record list per sample)
ProcessFn = Callable[[list[str], list[Any]], tuple[np.ndarray, list[list[dict[str, Any]]]]]


@dataclass
class Merged:
    """The merged result of all chunks, in the order of the requested names."""

    names: list[str]
    features: np.ndarray
    records: list[list[dict[str, Any]]]
    per_process: dict[int, int]  # samples each process rank produced (all runs together)


def process_state() -> Any:
    """Accelerate's view of this process (rank, world size, device). On a machine without a GPU
    (or with ACCELERATE_USE_CPU=1) a multi-process launch is a CPU (gloo) process group; unlike
    ``Accelerator``, ``PartialState`` does not read that variable itself."""
    import torch
    from accelerate import PartialState

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=flag or not torch.cuda.is_available())


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def run_sharded(
    out: Path,
    names: Sequence[str],
    load: Callable[[str], Any],
    process: ProcessFn,
    finish: Callable[[Merged], None],
    *,
    settings: dict[str, Any],
    batch_size: int,
    flush_every: int,
    workers: int = 0,
    restart: bool = False,
    progress: bool = True,
    desc: str = "extract",
) -> Merged | None:
    """Run ``process`` over ``names`` (this process's shard), resumably. Returns the merged
    result on the main process, None on the others."""
    state = process_state()
    work = partial_dir(out)
    if state.is_main_process:
        if restart and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / "run.json").is_file():
            _atomic_write(work / "run.json", json.dumps(settings, indent=1, sort_keys=True).encode())
    state.wait_for_everyone()
    recorded = json.loads((work / "run.json").read_text())
    if recorded != json.loads(json.dumps(settings)):
        changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise MMCLError(
            f"{work} holds partial results made with other settings ({', '.join(changed)}); "
            "pass --restart to discard them, or re-run with the same options to resume"
        )
    done = set(_finished_names(work))
    state.wait_for_everyone()  # everybody has read the finished set before anybody writes
    todo = [n for n in names if n not in done]
    shard = todo[state.process_index :: state.num_processes]

    _process_shard(work, shard, load, process, batch_size=batch_size, flush_every=flush_every,
                   workers=workers, rank=state.process_index,
                   progress=progress and state.is_local_main_process,
                   desc=f"{desc} [{len(done)} done before]" if done else desc)
    state.wait_for_everyone()
    merged = None
    if state.is_main_process:
        merged = merge_chunks(work, names)
        finish(merged)
        shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    return merged


def _process_shard(work: Path, shard: Sequence[str], load: Callable[[str], Any], process: ProcessFn, *,
                   batch_size: int, flush_every: int, workers: int, rank: int, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    buf_names: list[str] = []
    buf_feats: list[np.ndarray] = []
    buf_recs: list[list[dict[str, Any]]] = []
    with tqdm(total=len(shard), desc=desc, unit="sample", disable=not progress, dynamic_ncols=True) as bar:
        for batch_names, batch_inputs in _batches(shard, load, batch_size, workers):
            feats, recs = process(batch_names, batch_inputs)
            if feats.shape[0] != len(batch_names) or len(recs) != len(batch_names):
                raise MMCLError(f"internal error: {feats.shape[0]} feature rows for {len(batch_names)} samples")
            buf_names += batch_names
            buf_feats.append(np.asarray(feats, np.float32))
            buf_recs += recs
            bar.update(len(batch_names))
            if len(buf_names) >= flush_every:
                write_chunk(work, rank, buf_names, np.concatenate(buf_feats), buf_recs)
                buf_names, buf_feats, buf_recs = [], [], []
    if buf_names:
        write_chunk(work, rank, buf_names, np.concatenate(buf_feats), buf_recs)


def _batches(names: Sequence[str], load: Callable[[str], Any], batch_size: int, workers: int
             ) -> Iterable[tuple[list[str], list[Any]]]:
    """(names, loaded inputs) batches; ``workers`` > 0 loads them in DataLoader worker processes."""
    if not names:
        return
    if workers <= 0:
        for i in range(0, len(names), batch_size):
            chunk = list(names[i : i + batch_size])
            yield chunk, [load(n) for n in chunk]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_Loaded(list(names), load), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, shuffle=False)
    yield from loader


class _Loaded:
    """A map-style dataset: index -> (name, loaded input)."""

    def __init__(self, names: list[str], load: Callable[[str], Any]) -> None:
        self.names, self.load = names, load

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        return self.names[i], self.load(self.names[i])


def _collate(items: list[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    return [n for n, _ in items], [x for _, x in items]


def write_chunk(work: Path, rank: int, names: Sequence[str], features: np.ndarray,
                records: Sequence[list[dict[str, Any]]]) -> Path:
    """One atomic chunk file: names, features, per-sample records (JSON), producing rank."""
    path = work / f"chunk-r{rank}-{uuid.uuid4().hex[:12]}.npz"
    tmp = work / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, names=np.asarray(list(names), dtype=str), features=np.asarray(features, np.float32),
                 records=np.asarray([json.dumps(r) for r in records], dtype=str), rank=np.asarray(rank))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _chunks(work: Path) -> list[Path]:
    return sorted(p for p in work.glob("chunk-*.npz"))


def _finished_names(work: Path) -> list[str]:
    out: list[str] = []
    for p in _chunks(work):
        with np.load(p, allow_pickle=False) as z:
            out += z["names"].tolist()
    return out


def merge_chunks(work: Path, names: Sequence[str]) -> Merged:
    """All chunk files joined by name, ordered like ``names``; every name must be present."""
    rows: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    per_process: dict[int, int] = {}
    dim = None
    for p in _chunks(work):
        with np.load(p, allow_pickle=False) as z:
            feats, chunk_names, recs, rank = z["features"], z["names"].tolist(), z["records"].tolist(), int(z["rank"])
        if dim is not None and feats.shape[1] != dim:
            raise MMCLError(f"{p}: features of dimension {feats.shape[1]}, other chunks have {dim}; pass --restart")
        dim = feats.shape[1]
        for i, n in enumerate(chunk_names):
            if n not in rows:
                rows[n] = (feats[i], json.loads(recs[i]))
                per_process[rank] = per_process.get(rank, 0) + 1
    missing = [n for n in names if n not in rows]
    if missing:
        raise MMCLError(f"{work}: {len(missing)} samples have no result after all processes finished "
                        f"(first: {', '.join(missing[:5])}); re-run to resume")
    features = np.stack([rows[n][0] for n in names]) if names else np.zeros((0, dim or 0), np.float32)
    return Merged(list(names), features, [rows[n][1] for n in names], per_process)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
