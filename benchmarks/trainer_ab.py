"""What one on/off training setting gives the real ``mmcl train`` on a CPU.

``--setting keep_freed_memory`` (the default; ``train.keep_freed_memory``, ``mmcl.heap``) or
``--setting skip_empty_persons`` (``train.skip_empty_persons``: the empty person slots of a batch
run as one stream) or ``--setting mixed_precision`` (on: ``bf16`` autocast, for CPUs with native
bf16; off: ``no``; under bf16 every person stream runs). Each round starts two fresh training processes in turn, one with the setting
on (the default) and one with it off, in an order that alternates from round to round. Both
train the joint stream on the built-in synthetic set (NTU layout, 2 person slots; 352 of its 480
clips have one actor), NTU-shaped: 64-frame clips, ``--batch`` samples per update (16),
``--steps`` updates per epoch for ``--epochs`` epochs, tested only after the last. A worker
times every training epoch (``Trainer.train_epoch``: loading, augmentation and the steps) with
its minor page faults and kernel CPU time.

Prints ONE JSON object: per setting the median seconds per epoch over the epochs after the
first (the first also grows the heap), the first epoch's seconds, faults per epoch and peak
resident memory; and the per-round ratio off / on of the median epoch time.

    python benchmarks/trainer_ab.py                                  # ~16 minutes on 2 cores
    python benchmarks/trainer_ab.py --setting skip_empty_persons     # ~13 minutes
    python benchmarks/trainer_ab.py --rounds 1 --epochs 3
    python benchmarks/trainer_ab.py --setting mixed_precision --rounds 2          # ~8 minutes
    python benchmarks/trainer_ab.py --batch 64 --rounds 2 --epochs 3 --steps 4   # ~12 minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("on", "off")
KEYS = ("keep_freed_memory", "skip_empty_persons", "mixed_precision")  # keys of the config's train section
# the value of a key with the setting on and off (boolean keys: true / false)
VALUES = {"mixed_precision": ("bf16", "no")}


def worker(data: Path, run_dir: Path, key: str, on: bool, epochs: int, steps: int, batch: int) -> dict:
    """Train once in this process; per training epoch: seconds, minor faults, kernel seconds."""
    from mmcl.config import load_config
    from mmcl.engine import trainer

    epochs_seen: list[dict] = []
    train_epoch = trainer.Trainer.train_epoch

    def timed_epoch(self, epoch: int):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = train_epoch(self, epoch)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        epochs_seen.append({"seconds": round(seconds, 2), "minor_faults": after.ru_minflt - before.ru_minflt,
                            "system_s": round(after.ru_stime - before.ru_stime, 2)})
        return out

    trainer.Trainer.train_epoch = timed_epoch
    cfg = load_config(REPO / "configs/synthetic/xsub/joint.yaml", [
        f"data.path={data}", "data.window=64", f"train.batch_size={batch}", f"train.max_steps_per_epoch={steps}",
        f"schedule.epochs={epochs}", "schedule.warmup_epochs=1", f"schedule.lr_steps=[{epochs}]",
        f"train.eval_every={epochs}", f"train.{key}={VALUES.get(key, ('true', 'false'))[0 if on else 1]}",
    ])
    result = trainer.train(cfg, run_dir)
    return {"epochs": epochs_seen, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "test_top1": result.last_top1}


def run_worker(data: Path, run_dir: Path, key: str, setting: str, epochs: int, steps: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", setting, "--data", str(data), "--run-dir", str(run_dir),
           "--setting", key, "--epochs", str(epochs), "--steps", str(steps), "--batch", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"worker {setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=KEYS, default=KEYS[0], help="the train.* key to turn on and off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="training updates per epoch")
    parser.add_argument("--batch", type=int, default=16, help="samples per update")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.data, args.run_dir, args.setting, args.worker == "on", args.epochs, args.steps,
                                args.batch)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        subprocess.run([sys.executable, "-m", "mmcl", "prepare", "synthetic", "--out", str(data), "--seed", "0"],
                       check=True, capture_output=True, cwd=REPO)
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for r in range(args.rounds):
            for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                run = run_worker(data, Path(tmp) / f"run-{r}-{setting}", args.setting, setting, args.epochs, args.steps,
                                 args.batch)
                runs[setting].append(run)
                print(f"round {r} {setting}: {run}", file=sys.stderr, flush=True)

    def later(run: dict, key: str) -> float:
        return statistics.median(e[key] for e in run["epochs"][1:])

    summary = {
        setting: {
            "median_epoch_s_after_first": round(statistics.median(later(run, "seconds") for run in rs), 2),
            "first_epoch_s": [run["epochs"][0]["seconds"] for run in rs],
            "minor_faults_per_epoch_after_first": [later(run, "minor_faults") for run in rs],
            "system_s_per_epoch_after_first": [later(run, "system_s") for run in rs],
            "peak_rss_mb": [run["peak_rss_mb"] for run in rs],
        }
        for setting, rs in runs.items()
    }
    ratios = [later(off, "seconds") / later(on, "seconds") for on, off in zip(runs["on"], runs["off"])]
    print(json.dumps({
        "benchmark": "trainer_ab",
        "setting": f"train.{args.setting}",
        "batch": args.batch,
        "samples_per_epoch": args.steps * args.batch,
        "epochs": args.epochs,
        "rounds": args.rounds,
        **summary,
        "speedup_on_over_off_per_round": [round(x, 3) for x in ratios],
        "speedup_on_over_off_median": round(statistics.median(ratios), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
