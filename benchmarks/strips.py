"""Benchmark the RGB strip builder on the real NTU person-frame folders.

The four real folders of ``../shared/data/ntu-rgb/person-frames`` are repeated under new sample
names (symlinks) to make ``--samples`` samples; ``build_strips(..., frames=...)`` then reads 5
frames per sample, resizes and concatenates them, and writes one JPEG each.

Prints ONE JSON object: samples/s with ``--workers`` processes (goal >= 20) and, in the same
run, with one process, so the ratio is comparable.

Usage: ``python benchmarks/strips.py [--samples 400] [--workers 4] [--height 256]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mmcl.data.rgb import build_strips
from mmcl.data.store import DatasetWriter, Sample
from mmcl.graphs import NTU

REAL = {"S001C001P001R001A001": ("NTU60", 103), "S001C001P001R001A002": ("NTU60", 158),
        "S018C001P008R001A061": ("NTU120", 161), "S018C001P008R001A062": ("NTU120", 128)}


def shared_data() -> Path:
    env = os.environ.get("MMCL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_inputs(root: Path, samples: int) -> tuple[Path, Path]:
    """A dataset of ``samples`` samples and a frames root whose folders link to the real ones."""
    real_root = shared_data() / "ntu-rgb" / "person-frames"
    if not real_root.is_dir():
        raise SystemExit(f"real person frames not found at {real_root} (set MMCL_SHARED_DATA)")
    frames = root / "frames" / "NTU60"
    frames.mkdir(parents=True)
    reals = list(REAL.items())
    names, lengths = [], []
    for i in range(samples):
        real, (group, length) = reals[i % len(reals)]
        name = f"S{i // 1000 + 1:03d}C001P{i % 1000 // 10 + 1:03d}R{i % 10 + 1:03d}A{i % 120 + 1:03d}"
        (frames / name).symlink_to(real_root / group / real)
        names.append(name)
        lengths.append(length)
    ds = root / "ds"
    with DatasetWriter(ds, name="bench", layout=NTU, num_person=2, channels=3, class_names=["a"],
                       has_colors=False, meta_fields=[], source={"benchmark": "strips"}) as w:
        for name, t in zip(names, lengths):
            w.add(Sample(name=name, label=0, joints=np.zeros((t, 2, 25, 3), np.float32)))
        w.finish({"all": {"train": names, "test": []}})
    return ds, root / "frames"


def timed(ds: Path, frames: Path, workers: int, height: int) -> float:
    start = time.perf_counter()
    rejected = build_strips(ds, videos=None, frames=frames, k=5, workers=workers, height=height, progress=False)
    seconds = time.perf_counter() - start
    if rejected:
        raise SystemExit(f"unexpected rejections: {rejected[:3]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--height", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ds, frames = make_inputs(Path(tmp), args.samples)
        one = timed(ds, frames, 1, args.height)
        many = timed(ds, frames, args.workers, args.height)
        size = sum(p.stat().st_size for p in (ds / "rgb").glob("*.jpg")) / args.samples
    print(json.dumps({
        "benchmark": "rgb strips from real NTU person-frame folders (k=5)",
        "samples": args.samples,
        "workers": args.workers,
        "samples_per_s": round(args.samples / many, 1),
        "goal_samples_per_s": 20,
        "meets_goal": args.samples / many >= 20,
        "samples_per_s_one_process": round(args.samples / one, 1),
        "speedup_vs_one_process": round(one / many, 2),
        "mean_strip_kib": round(size / 1024, 1),
        "height": args.height,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
