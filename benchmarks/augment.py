"""Benchmark the training input pipeline: augmentation per sample in DataLoader workers vs
in batches on the training device.

Both paths read the same synthetic NTU-shaped dataset (2 persons, 25 joints, 3 channels,
clips of 60-300 frames, a third with one actor) through ``SkeletonClips`` (train: random
crop + resize to 64 frames) and produce the same kind of batch (64 clips, rotated, in the
chosen stream):

- ``per_sample``: ``SkeletonClips(..., augment=aug)``, so rotation and stream run inside
  the workers, one sample at a time;
- ``batched``: plain ``SkeletonClips``, then ``aug(batch["x"].to(device), train=True)`` in
  the main process, once per batch;
- ``no_augment``: the loader alone (the ceiling both paths approach).

Prints ONE JSON object:

- ``augment_only``: CPU ms per sample of the augmentation alone (no loading), one thread,
  per sample vs one batched call, lowest of 100 rounds: the cost that moves between the
  workers and the training device;
- ``loader``: per stream and worker count, samples/s of each whole path (best of
  ``--repeat`` epochs over the training set, epochs of the three paths interleaved), CPU ms
  per sample summed over the main process and its workers, and the main-process cost of
  the batched call (median ms per batch, best epoch);
- ratios batched / per_sample, and ``faster``: the path with the lower augmentation cost,
  provided the batched loader keeps pace (wall ratio >= 0.9 in every setting).

Load from other processes makes wall-clock figures on a shared machine noisy; the
1-minute load average before and after the run is part of the output.

Usage: ``python benchmarks/augment.py [--samples 1000] [--workers 0 2] [--streams joint bone_motion]
[--batch 64] [--repeat 3] [--device cpu] [--threads N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmcl.data.augment import BatchAugment
from mmcl.data.loading import SkeletonClips
from mmcl.data.store import DatasetWriter, Sample, open_dataset
from mmcl.graphs import NTU


def make_dataset(folder: Path, samples: int, seed: int = 0) -> Path:
    """A synthetic NTU-shaped dataset: random-walk skeletons of 60-300 frames."""
    rng = np.random.default_rng(seed)
    out = folder / "synthetic-ntu"
    with DatasetWriter(out, name="bench", layout=NTU, num_person=2, channels=3,
                       class_names=[f"c{i}" for i in range(60)], has_colors=False,
                       meta_fields=[], source={"kind": "benchmark"}) as writer:
        for i in range(samples):
            frames = int(rng.integers(60, 301))
            joints = rng.normal(0, 0.3, (1, 2, 25, 3)) + np.cumsum(rng.normal(0, 0.01, (frames, 2, 25, 3)), 0)
            one_actor = i % 3 == 0
            if one_actor:
                joints[:, 1] = 0
            writer.add(Sample(f"s{i:05d}", i % 60, joints.astype(np.float32), bodies=1 if one_actor else 2))
        names = [f"s{i:05d}" for i in range(samples)]
        writer.finish({"all": {"train": names, "test": names}})
    return out


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (DataLoader workers are joined
    when an epoch's iterator ends), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_epoch(loader: DataLoader, step, device: torch.device) -> dict[str, float]:
    """One full pass: samples/s (wall), CPU ms per sample (all processes), main-process
    seconds spent in ``step``."""
    seen, steps = 0, []
    cpu0, start = cpu_seconds(), time.perf_counter()
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)
        t0 = time.perf_counter()
        x = step(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        steps.append(time.perf_counter() - t0)
        seen += x.shape[0]
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return {"rate": seen / wall, "cpu_ms": 1000 * cpu / seen, "step_ms": 1000 * float(np.median(steps))}


def measure(ds, names, *, stream: str, workers: int, batch: int, repeat: int, device: torch.device) -> dict:
    """The three paths, epochs interleaved round-robin so that load from other processes hits
    all of them alike. Reported: the best epoch's samples/s (wall) and the lowest CPU ms per
    sample summed over the main process and the workers (robust to such load)."""
    aug = BatchAugment("ntu", stream, NTU)
    common = dict(recipe="ntu", train=True, window=64, num_person=2, seed=0)
    paths = {
        "per_sample": (SkeletonClips(ds, names, augment=aug, **common), lambda x: x),
        "batched": (SkeletonClips(ds, names, **common), lambda x: aug(x, train=True)),
        "no_augment": (SkeletonClips(ds, names, **common), lambda x: x),
    }
    loaders = {key: DataLoader(clips, batch_size=batch, shuffle=True, num_workers=workers,
                               pin_memory=device.type == "cuda") for key, (clips, _) in paths.items()}
    aug(torch.randn(batch, 3, 64, 25, 2, device=device), train=True)  # warm-up (thread pool, kernels)
    runs: dict[str, list[dict[str, float]]] = {key: [] for key in paths}
    for epoch in range(repeat):
        for key, (clips, step) in paths.items():
            clips.set_epoch(epoch)
            runs[key].append(run_epoch(loaders[key], step, device))
    result: dict = {}
    for key, epochs in runs.items():
        result[key] = {
            "samples_per_s": round(max(r["rate"] for r in epochs), 1),
            "cpu_ms_per_sample": round(min(r["cpu_ms"] for r in epochs), 3),
            "all_epochs_samples_per_s": [round(r["rate"], 1) for r in epochs],
        }
    result["batched"]["main_process_ms_per_batch_median"] = round(min(r["step_ms"] for r in runs["batched"]), 3)
    result["batched_over_per_sample"] = {
        "samples_per_s": round(result["batched"]["samples_per_s"] / result["per_sample"]["samples_per_s"], 3),
        "cpu_efficiency": round(result["per_sample"]["cpu_ms_per_sample"] / result["batched"]["cpu_ms_per_sample"], 3),
    }
    return result


def augment_only(stream: str, batch: int, rounds: int, device: torch.device) -> dict:
    """The augmentation alone, without loading: CPU ms per sample of ``per_sample`` (one
    sample at a time, as a worker runs it) and of one batched call on ``device``, lowest of
    ``rounds`` (process CPU time, so other processes' load does not count)."""
    aug = BatchAugment("ntu", stream, NTU)
    x = torch.randn(batch, 3, 64, 25, 2)
    xd = x.to(device)
    gen = torch.Generator().manual_seed(0)
    single, batched = float("inf"), float("inf")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread each, as a DataLoader worker runs: CPU time compares alike
    for _ in range(rounds):
        t0 = time.process_time()
        for i in range(batch):
            aug.per_sample(x[i], True, gen)
        single = min(single, (time.process_time() - t0) / batch)
        t0 = time.process_time()
        aug(xd, train=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        batched = min(batched, (time.process_time() - t0) / batch)
    torch.set_num_threads(threads)
    return {"per_sample_cpu_ms_per_sample": round(1000 * single, 4),
            "batched_cpu_ms_per_sample": round(1000 * batched, 4),
            "per_sample_over_batched": round(single / batched, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--streams", nargs="+", default=["joint", "bone_motion"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: torch's, one per core)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = open_dataset(make_dataset(Path(tmp), args.samples))
        build_s = time.perf_counter() - t0
        results = {}
        aug_only = {stream: augment_only(stream, args.batch, 100, device) for stream in args.streams}
        for stream in args.streams:
            for workers in args.workers:
                results[f"{stream}/workers={workers}"] = measure(
                    ds, ds.names, stream=stream, workers=workers, batch=args.batch,
                    repeat=args.repeat, device=device)

    aug_ratio = [a["per_sample_over_batched"] for a in aug_only.values()]
    cpu = [r["batched_over_per_sample"]["cpu_efficiency"] for r in results.values()]
    wall = [r["batched_over_per_sample"]["samples_per_s"] for r in results.values()]
    if min(aug_ratio) >= 1.0 and min(wall) >= 0.9:
        faster = "batched"
    elif max(aug_ratio) < 1.0 or max(wall) < 0.9:
        faster = "per_sample"
    else:
        faster = "mixed"

    out = {
        "benchmark": "augment",
        "shape": {"batch": args.batch, "channels": 3, "window": 64, "joints": 25, "persons": 2},
        "samples": args.samples,
        "frames": "uniform 60-300",
        "device": str(device),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "dataset_build_s": round(build_s, 2),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "augment_only": aug_only,
        "loader": results,
        "augment_cpu_per_sample_over_batched": {"min": min(aug_ratio), "max": max(aug_ratio)},
        "loader_samples_per_s_batched_over_per_sample": {"min": min(wall), "max": max(wall)},
        "loader_cpu_efficiency_batched_over_per_sample": {"min": min(cpu), "max": max(cpu)},
        "faster": faster,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
