"""Benchmark ``mmcl ensemble`` at NTU120 X-Set size: 6 streams x 59,477 samples x 120 classes.

Prints ONE JSON object:

- ``fuse_wall_s``: wall time of the whole ``python -m mmcl ensemble`` process (start-up,
  loading the six files, aligning them by name, per-stream and fused top-1/top-5, per-class
  report), best and median of several runs; goal < 1 s;
- ``search_s``: one weight search over the 6 streams (in-process, ``search_weights``); goal < 30 s;
  ``kfold_search_wall_s``: the whole ``--search`` process (5 folds + the search on everything);
- ``peak_rss_ratio``: peak RSS of the fusion process / size of the six score arrays; goal <= 2;
- ``torch_imported``: whether ``python -X importtime -m mmcl ensemble`` imported torch.

The scores are random but label-correlated (single streams ~75-85 % top-1), so the search has
real work to do; every file but the first lists the samples in a different random order.

Usage: ``python benchmarks/ensemble.py [--samples 59477] [--classes 120] [--streams 6] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmcl.ensemble import load_streams, search_weights
from mmcl.scores import load_scores, save_scores


def make_files(folder: Path, samples: int, classes: int, streams: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    names = np.array(
        [f"S{i % 32 + 1:03d}C{i % 3 + 1:03d}P{i // 96 % 106 + 1:03d}R{i // 96 // 106 % 2 + 1:03d}"
         f"A{labels[i] + 1:03d}_{i}" for i in range(samples)]
    )
    shared = rng.standard_normal((samples, classes), dtype=np.float32)
    paths = []
    for s in range(streams):
        strength = 4.6 - 0.25 * s
        scores = rng.standard_normal((samples, classes), dtype=np.float32)
        scores += 0.7 * shared
        scores[np.arange(samples), labels] += strength
        order = np.arange(samples) if s == 0 else rng.permutation(samples)
        path = folder / f"stream{s}.npz"
        save_scores(path, names[order], scores[order], labels[order],
                    {"stream": f"s{s}", "dataset": "benchmark", "benchmark": "random"})
        paths.append(path)
    return paths


# Runs ``mmcl`` in-process and reports the peak resident set (VmHWM) of this process at exit.
# VmHWM starts afresh at exec, so the benchmark's own memory never leaks into the figure.
_PEAK_WRAPPER = """
import atexit, sys
def _report():
    with open('/proc/self/status') as fh:
        peak = next(line.split()[1] for line in fh if line.startswith('VmHWM:'))
    sys.stderr.write('VMHWM_KB ' + peak + '\\n')
atexit.register(_report)
sys.argv = ['mmcl'] + sys.argv[1:]
from mmcl.cli import main
main()
"""


def run_child(cmd: list[str]) -> tuple[float, str, str]:
    """Wall time (s), stdout and stderr of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, out, err


def timed_child(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child, output discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime


def peak_rss(args: list[str]) -> int:
    """Peak RSS in bytes of ``mmcl *args`` (VmHWM of that process)."""
    _, _, err = run_child([sys.executable, "-c", _PEAK_WRAPPER, *args])
    return int(err.rsplit("VMHWM_KB", 1)[1].split()[0]) * 1024


def idle_rss() -> int:
    """Peak RSS of a Python that only imports what ``mmcl ensemble`` needs at start-up."""
    code = ("import numpy, click, tabulate, mmcl.cli;"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout) * 1024


def write_pickles(paths: list[Path]) -> list[Path]:
    """The same streams in the upstream format (``{name: score row}`` pickles)."""
    out = []
    for path in paths:
        sf = load_scores(path)
        target = path.with_suffix(".pkl")
        with open(target, "wb") as fh:
            pickle.dump(dict(zip(sf.names.tolist(), sf.scores)), fh, protocol=4)
        out.append(target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=59_477)
    parser.add_argument("--classes", type=int, default=120)
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmcl-bench-ensemble-") as tmp:
        folder = Path(tmp)
        paths = make_files(folder, args.samples, args.classes, args.streams)
        files = [str(p) for p in paths]
        array_bytes = args.streams * args.samples * args.classes * 4
        base = [sys.executable, "-m", "mmcl", "ensemble", *files]
        fuse_cmd = [*base, "--json", "--out", str(folder / "fused.npz")]

        run_child(fuse_cmd)  # warm the page cache and bytecode caches
        runs = [timed_child(fuse_cmd) for _ in range(args.repeat)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        rss = peak_rss(["ensemble", *files, "--json", "--out", str(folder / "fused.npz")])
        baseline = idle_rss()

        _, _, importtime = run_child([sys.executable, "-X", "importtime", "-m", "mmcl", "ensemble",
                                         *files, "--json"])
        imported = {line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if "|" in line}
        torch_imported = any(m == "torch" or m.startswith("torch.") for m in imported)

        data = load_streams(paths)
        start = time.perf_counter()
        found = search_weights(data.scores, data.labels)
        search_s = time.perf_counter() - start
        del data

        kfold_wall, kfold_out, _ = run_child([*base, "--search", "--folds", "5", "--json"])
        kfold = json.loads(kfold_out)
        by_name = {e["name"]: e for e in kfold["ensembles"]}
        search_rss = peak_rss(["ensemble", *files, "--search", "--json"])

        pickles = write_pickles(paths)
        for path in paths:
            path.unlink()
        pickle_cmd = [sys.executable, "-m", "mmcl", "ensemble", *map(str, pickles), "--json"]
        run_child(pickle_cmd)
        pickle_wall, pickle_cpu = min(timed_child(pickle_cmd) for _ in range(3))

    result = {
        "benchmark": "mmcl ensemble",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "streams": args.streams,
        "samples": args.samples,
        "classes": args.classes,
        "score_arrays_mib": round(array_bytes / 2**20, 1),
        "fuse_wall_s": {"best": round(min(walls), 3), "median": round(statistics.median(walls), 3),
                        "runs": [round(w, 3) for w in walls]},
        "fuse_cpu_s": {"best": round(min(cpus), 3), "median": round(statistics.median(cpus), 3)},
        "fuse_goal_s": 1.0,
        "peak_rss_mib": round(rss / 2**20, 1),
        "peak_rss_ratio": round(rss / array_bytes, 2),
        "startup_rss_mib": round(baseline / 2**20, 1),
        "rss_goal_ratio": 2.0,
        "search_s": round(search_s, 2),
        "search_rounds": found.rounds,
        "search_goal_s": 30.0,
        "kfold_search_wall_s": round(kfold_wall, 2),
        "search_peak_rss_ratio": round(search_rss / array_bytes, 2),
        "top1": {
            "best_stream": round(max(s["top1"] for s in kfold["streams"]), 4),
            "equal_weights": round(by_name["equal weights"]["top1"], 4),
            "searched_5fold_out_of_fold": round(by_name["searched (5-fold cross-fit)"]["top1"], 4),
            "searched_on_all_optimistic": round(by_name["searched on all test samples"]["top1"], 4),
        },
        "upstream_pickles_fuse_wall_s": round(pickle_wall, 3),
        "upstream_pickles_fuse_cpu_s": round(pickle_cpu, 3),
        "torch_imported": torch_imported,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
