"""How the memory allocator moves CTR-GCN's CPU speed: glibc's default malloc against freed memory
kept for reuse, for mmcl's CTR-GCN and the upstream-style one.

glibc serves every block above 32 MB with a fresh ``mmap`` and unmaps it on ``free``, and trims
the top of its heap once enough of it is free, so such memory is page-faulted and zero-filled
again by the kernel on the next step. Three settings:

* ``default``: glibc as it starts;
* ``retain``: ``MALLOC_MMAP_MAX_=0`` with a large ``MALLOC_TRIM_THRESHOLD_``: every block from a
  heap that is never trimmed;
* ``kept_heap``: what ``mmcl train`` sets (``mmcl.heap.keep_freed_memory``), through ``mallopt``
  at run time: every block from a heap that is never trimmed, as ``retain``. (Until session 11
  it kept blocks up to 32 MB only, and mapped larger ones afresh.)

Each round starts one fresh worker process per (implementation, allocator) pair, in an order
that alternates from round to round, so load from other jobs affects all alike. A worker builds
the NTU-shaped model (64 frames, 25 joints, 2 persons, 120 classes) and times, like
``benchmarks/model_speed.py``:

* the training step at batch 16 (``model_speed.py``'s SGD step, cross-entropy);
* inference at batch 64 (the reference in eval mode, mmcl through ``optimize_for_inference``);

with the wall time, the kernel (system) CPU time and the minor page faults per call, and the
process's peak resident memory. Prints ONE JSON object with per-pair medians, mmcl's speed-up
over the reference under each allocator setting, and each implementation's gain over the default.

    python benchmarks/allocator.py               # ~20 minutes on 2 cores
    python benchmarks/allocator.py --rounds 1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

# Environment of the worker processes per setting (glibc reads these at start-up).
ALLOCATORS = {
    "default": {},
    "retain": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**32)},
    # What `mmcl train` does (mmcl.heap.keep_freed_memory, called in the worker): every block
    # from a heap that is never trimmed, set by mallopt at run time.
    "kept_heap": {},
}
IN_PROCESS = {"kept_heap"}
IMPLEMENTATIONS = ("reference", "mmcl")
PARTS = ("train_step_batch16", "inference_batch64")
BATCH = {"train_step_batch16": 16, "inference_batch64": 64}


def worker(impl: str, steps: int, keep_heap: bool) -> dict:
    """Time the training step and inference of one implementation in this process (the caller
    sets the allocator's environment; ``keep_heap`` calls mmcl.heap.keep_freed_memory first)."""
    if keep_heap:
        from mmcl.heap import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory does not apply here (not Linux with glibc)")
    import torch
    import torch.nn.functional as F

    from mmcl.graphs import get_layout
    from mmcl.models import CTRGCN, optimize_for_inference

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _upstream_ctrgcn import UpstreamCTRGCN
    from model_speed import sgd
    from model_speed import train_step as make_train_step

    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()
    model = (UpstreamCTRGCN if impl == "reference" else CTRGCN)(120, adjacency).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 64, 25, 2, generator=g), torch.randint(0, 120, (16,), generator=g)
    x64 = torch.randn(64, 3, 64, 25, 2, generator=g)
    train_step = make_train_step(model, sgd(model), lambda: F.cross_entropy(model(x), y))

    def measure(fn: Callable[[], object]) -> dict:
        fn()  # warm-up
        wall, system, faults = [], [], []
        for _ in range(steps):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            fn()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            wall.append(t1 - t0)
            system.append(r1.ru_stime - r0.ru_stime)
            faults.append(r1.ru_minflt - r0.ru_minflt)
        return {"wall_s": statistics.median(wall), "system_s": statistics.median(system),
                "minor_faults": statistics.median(faults)}

    result = {"train_step_batch16": measure(train_step)}
    model.eval()
    infer_model = model if impl == "reference" else optimize_for_inference(model)

    def infer() -> None:
        with torch.no_grad():
            infer_model(x64)

    result["inference_batch64"] = measure(infer)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


def run_worker(impl: str, allocator: str, steps: int, threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", impl, "--steps", str(steps)]
    if allocator in IN_PROCESS:
        cmd.append("--keep-heap")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed calls per measurement and worker")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the workers")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--keep-heap", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.keep_heap)))
        return

    pairs = [(impl, alloc) for impl in IMPLEMENTATIONS for alloc in ALLOCATORS]
    runs: dict[str, list[dict]] = {f"{impl}/{alloc}": [] for impl, alloc in pairs}
    for r in range(args.rounds):
        for impl, alloc in pairs if r % 2 == 0 else reversed(pairs):
            key = f"{impl}/{alloc}"
            runs[key].append(run_worker(impl, alloc, args.steps, args.threads))
            print(f"round {r} {key}: {runs[key][-1]}", file=sys.stderr, flush=True)

    def wall(key: str, part: str, r: int) -> float:
        return runs[key][r][part]["wall_s"]

    def ratio(slow: str, fast: str, part: str) -> float:
        """Median over rounds of the per-round wall-time ratio slow / fast."""
        return round(statistics.median(wall(slow, part, r) / wall(fast, part, r) for r in range(args.rounds)), 3)

    result: dict = {}
    for part in PARTS:
        result[part] = {
            "samples_per_s": {
                key: round(BATCH[part] / statistics.median(wall(key, part, r) for r in range(args.rounds)), 2)
                for key in runs
            },
            "system_s_per_call": {key: round(statistics.median(run[part]["system_s"] for run in runs[key]), 3) for key in runs},
            "minor_faults_per_call": {key: statistics.median(run[part]["minor_faults"] for run in runs[key]) for key in runs},
            "speedup_same_allocator": {alloc: ratio(f"reference/{alloc}", f"mmcl/{alloc}", part) for alloc in ALLOCATORS},
            "gain_over_default": {
                f"{impl}/{alloc}": ratio(f"{impl}/default", f"{impl}/{alloc}", part)
                for impl in IMPLEMENTATIONS for alloc in ALLOCATORS if alloc != "default"
            },
        }
    print(json.dumps({
        "benchmark": "allocator",
        "machine": {"cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
        "rounds": args.rounds,
        "steps": args.steps,
        "peak_rss_mb": {key: max(run["peak_rss_mb"] for run in runs[key]) for key in runs},
        **result,
        "allocators": {k: v or ("mmcl.heap.keep_freed_memory()" if k in IN_PROCESS else "glibc defaults")
                       for k, v in ALLOCATORS.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
