"""Speed, memory and disk of ``mmcl prepare ntu60``; prints one JSON object.

For each N (default 1,200 and 12,000) it makes N raw files by copying the 12 real NTU files
(../shared/data/ntu-skeletons) under new valid names into a temporary folder, runs
``mmcl prepare ntu60`` on them as a subprocess, and measures:

- files/s: N / wall time of the whole command (start-up and imports included);
- peak RSS: of the process tree (the command plus its pool workers, summed, sampled every
  20 ms from /proc) and of the largest single process (``wait4`` ``ru_maxrss``, which covers
  the waited-for pool children);
- disk: the prepared folder against CTR-GCN's npz for the same samples, float32 (N, 300, 150)
  x plus float64 one-hot (N, 60) y = N * 180,480 bytes (and it writes two such files, CS and CV).

Baselines: CTR-GCN's published figures on a 2-core machine (13.3 s / 1,200 files, 142 s /
12,000 files, 497 MiB / 4.5 GiB peak), and, measured in the same run just before each N, a
reader written the way CTR-GCN's first script reads (line by line, ``np.array`` per joint line).
That is only one of CTR-GCN's three scripts, so ratios against it understate the speed-up. On a
shared machine wall-clock figures move with the other load (recorded as load averages); the
CPU-time ratio (CPU per file of the whole command, workers and start-up included, against the
baseline's CPU per file) does not.

    python benchmarks/prepare.py [--sizes 1200 12000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MMCL_SHARED_DATA", REPO.parent / "shared" / "data"))
CTRGCN_PUBLISHED = {1200: {"seconds": 13.3, "peak_rss_mib": 497}, 12000: {"seconds": 142.0, "peak_rss_mib": 4.5 * 1024}}
CTRGCN_BYTES_PER_SAMPLE = 300 * 150 * 4 + 60 * 8  # x float32 (300, 150) + y one-hot float64 (60,)


def make_raw(folder: Path, n: int, sources: list[Path], missing: set[str], link: bool) -> None:
    """N valid NTU60 names (setup, camera, subject, replication, action), skipping the missing list."""
    folder.mkdir(parents=True)
    made, i = 0, 0
    while made < n:
        a, rest = i % 60, i // 60
        r, rest = rest % 2, rest // 2
        p, rest = rest % 40, rest // 40
        c, s = rest % 3, rest // 3
        i += 1
        name = f"S{s % 17 + 1:03d}C{c + 1:03d}P{p + 1:03d}R{r + 1:03d}A{a + 1:03d}"
        if name in missing:
            continue
        src = sources[made % len(sources)]
        dst = folder / f"{name}.skeleton"
        os.link(src, dst) if link else shutil.copyfile(src, dst)
        made += 1


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, ()))
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_prepare(raw: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-m", "mmcl", "prepare", "ntu60", "--raw", str(raw), "--out", str(out), "--workers", str(workers)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mmcl prepare failed ({proc.returncode}):\n{output}")
    cpu = usage.ru_utime + usage.ru_stime  # the command and its waited-for pool workers
    return {"seconds": seconds, "cpu": cpu, "peak_rss_tree": peak[0], "peak_rss_process": usage.ru_maxrss * 1024, "output": output}


def ctrgcn_style_read(path: Path) -> dict:
    """Reads a file the way CTR-GCN's get_raw_skes_data.py does (the baseline)."""
    with open(path) as fr:
        lines = fr.readlines()
    num_frames, current, bodies, valid = int(lines[0].strip("\r\n")), 1, {}, -1
    for _ in range(num_frames):
        num_bodies = int(lines[current].strip("\r\n"))
        current += 1
        if num_bodies == 0:
            continue
        valid += 1
        joints = np.zeros((num_bodies, 25, 3), dtype=np.float32)
        colors = np.zeros((num_bodies, 25, 2), dtype=np.float32)
        for b in range(num_bodies):
            body_id = lines[current].strip("\r\n").split()[0]
            num_joints = int(lines[current + 1].strip("\r\n"))
            current += 2
            for j in range(num_joints):
                fields = lines[current].strip("\r\n").split()
                joints[b, j, :] = np.array(fields[:3], dtype=np.float32)
                colors[b, j, :] = np.array(fields[5:7], dtype=np.float32)
                current += 1
            if body_id not in bodies:
                bodies[body_id] = {"joints": joints[b], "colors": colors[b, None], "interval": [valid]}
            else:
                body = bodies[body_id]
                body["joints"] = np.vstack((body["joints"], joints[b]))
                body["colors"] = np.vstack((body["colors"], colors[b, None]))
                body["interval"].append(body["interval"][-1] + 1)
    return bodies


def ctrgcn_style_cpu(sources: list[Path], n: int) -> float:
    """CPU seconds per file of the CTR-GCN-style reader (CPU time: less sensitive to other load)."""
    started = time.process_time()
    for i in range(n):
        ctrgcn_style_read(sources[i % len(sources)])
    return (time.process_time() - started) / n


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1200, 12000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-files", type=int, default=120, help="files read by the CTR-GCN-style baseline")
    parser.add_argument("--link", action="store_true", help="hard-link instead of copying the raw files")
    parser.add_argument("--tmp", type=Path, default=None, help="where to put the temporary raw files")
    args = parser.parse_args()

    sources = sorted((SHARED / "ntu-skeletons").glob("*.skeleton"))
    if len(sources) != 12:
        raise SystemExit(f"expected the 12 real NTU files in {SHARED / 'ntu-skeletons'}")
    sys.path.insert(0, str(REPO))
    from mmcl.data import ntu
    from mmcl.data.ntu import Ntu60Source, missing_skeletons

    missing = set(missing_skeletons(Ntu60Source.missing_list))
    result: dict = {
        "benchmark": "mmcl prepare ntu60",
        "workers": args.workers,
        "reader": "compiled (mmcl/data/_ntuparse.c)" if ntu._ntuparse is not None else "numpy (not built)",
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "raw_files": "copies of the 12 real NTU60 files (42-124 frames) under new names",
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="mmcl-bench-prepare-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            raw, out = tmp / f"raw{n}", tmp / f"out{n}"
            make_raw(raw, n, sources, missing, args.link)
            os.sync()
            baseline = ctrgcn_style_cpu(sources, args.baseline_files)
            measured = run_prepare(raw, out, args.workers)
            dataset_bytes = folder_bytes(out)
            ctrgcn_bytes = n * CTRGCN_BYTES_PER_SAMPLE
            run = {
                "files": n,
                "seconds": round(measured["seconds"], 2),
                "files_per_s": round(n / measured["seconds"], 1),
                "cpu_ms_per_file": round(measured["cpu"] / n * 1e3, 2),
                "ctrgcn_style_read_cpu_ms_per_file": round(baseline * 1e3, 2),
                "cpu_work_ratio_vs_ctrgcn_style_read": round(baseline / (measured["cpu"] / n), 1),
                "peak_rss_tree_mib": round(measured["peak_rss_tree"] / 2**20, 1),
                "peak_rss_largest_process_mib": round(measured["peak_rss_process"] / 2**20, 1),
                "dataset_bytes": dataset_bytes,
                "dataset_bytes_joints_only": (out / "joints.npy").stat().st_size,
                "ctrgcn_npz_bytes": ctrgcn_bytes,
                "disk_ratio_vs_one_ctrgcn_npz": round(dataset_bytes / ctrgcn_bytes, 3),
            }
            published = CTRGCN_PUBLISHED.get(n)
            if published:
                run["ctrgcn_published_seconds"] = published["seconds"]
                run["speedup_vs_ctrgcn_published"] = round(published["seconds"] / measured["seconds"], 1)
                run["ctrgcn_published_peak_rss_mib"] = published["peak_rss_mib"]
            result["runs"].append(run)
            shutil.rmtree(raw)
            shutil.rmtree(out)

        # the same-run baseline: CTR-GCN's way of reading, one process, wall clock
        files = [sources[i % len(sources)] for i in range(args.baseline_files)]
        started = time.perf_counter()
        for path in files:
            ctrgcn_style_read(path)
        baseline = len(files) / (time.perf_counter() - started)
    result["ctrgcn_style_read_only_files_per_s_one_process"] = round(baseline, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    big = result["runs"][-1]
    result["goals"] = {
        "10x_ctrgcn_throughput": all(r.get("speedup_vs_ctrgcn_published", 10) >= 10 for r in result["runs"]),
        "peak_rss_under_1GB_at_largest_N": big["peak_rss_tree_mib"] * 2**20 < 1e9,
        "peak_rss_flat_in_N": big["peak_rss_tree_mib"] < 1.5 * result["runs"][0]["peak_rss_tree_mib"],
        "disk_at_most_half_of_ctrgcn_npz": all(r["disk_ratio_vs_one_ctrgcn_npz"] <= 0.5 for r in result["runs"]),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
