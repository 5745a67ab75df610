"""Training on a CPU's cores: one process with intra-op threads, or one DDP process per core.

``mmcl train`` runs on Accelerate, so a CPU user can train as ``ACCELERATE_USE_CPU=1 accelerate
launch --multi_gpu --num_processes P -m mmcl train ...``: P processes, each on its share of the
batch, gradients averaged over gloo. The upstream code has ``nn.DataParallel`` only, which on a
CPU runs one process, so a single process using every core through its intra-op threads is its
only CPU option. This benchmark times, side by side in one run, the batch-16 SGD training step
(NTU shape: 64 frames, 25 joints, 2 persons, 120 classes; the same step as
``benchmarks/model_speed.py``) of:

* ``reference_1proc`` / ``mmcl_1proc``: one process, ``--threads`` intra-op threads (default: all cores);
* ``reference_ddp`` / ``mmcl_ddp``: ``--procs`` DDP processes (default: one per core), one thread
  each, each on its part of the same 16 samples.

The DDP processes start once and wait, idle, while the single process runs, so the four
settings alternate round by round in a rotating order and share the machine's load alike. As in
DDP (and upstream's DataParallel), each process's BatchNorm normalises over its own part of the
batch. Prints ONE JSON object: per setting the median seconds per step and samples/s, and the
ratios ``mmcl_ddp / reference_1proc`` (mmcl's CPU launch against upstream's only one),
``mmcl_1proc / reference_1proc`` (the model alone), ``reference_ddp / reference_1proc`` and
``mmcl_ddp / mmcl_1proc`` (what the launch alone gives each model).

    python benchmarks/cpu_ddp.py                # ~5 minutes on 2 cores
    python benchmarks/cpu_ddp.py --rounds 2     # ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from model_speed import CLASSES, FRAMES, JOINTS, PERSONS, log, sgd, train_step  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN, load_upstream_state_dict  # noqa: E402

MODELS = ("reference", "mmcl")


def build(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Both models with the same weights (a fixed seed, so every process builds the same ones)."""
    torch.manual_seed(seed)
    adjacency = get_layout("ntu").adjacency()
    reference = UpstreamCTRGCN(CLASSES, adjacency)
    ours = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(ours, reference.state_dict())
    return {"reference": reference.train(), "mmcl": ours.train()}


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, FRAMES, JOINTS, PERSONS, generator=g), torch.randint(0, CLASSES, (size,), generator=g)


def steps_of(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, wrap=lambda m: m) -> dict:
    """One SGD step per model, as ``model_speed.py`` times it."""
    out = {}
    for name, model in models.items():
        module = wrap(model)
        out[name] = train_step(model, sgd(model), lambda module=module: F.cross_entropy(module(x), y))
    return out


def worker(rank: int, procs: int, port: int, global_batch: int, commands, results) -> None:
    """One DDP process: waits for ``(model, steps)``, runs them, reports rank 0's wall time."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=procs)
    x, y = batch(global_batch)
    share = global_batch // procs
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    steps = steps_of(build(), x, y, wrap=DistributedDataParallel)
    while (command := commands.get()) is not None:
        name, n = command
        dist.barrier()
        start = time.perf_counter()
        for _ in range(n):
            steps[name]()
        dist.barrier()
        if rank == 0:
            results.put(time.perf_counter() - start)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--procs", type=int, default=cores, help="DDP processes (default: one per core)")
    parser.add_argument("--threads", type=int, default=cores, help="intra-op threads of the single process")
    args = parser.parse_args()
    if args.batch % args.procs:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --procs {args.procs}")

    ctx = mp.get_context("spawn")
    commands = [ctx.Queue() for _ in range(args.procs)]
    results = ctx.Queue()
    port = free_port()
    workers = [
        ctx.Process(target=worker, args=(r, args.procs, port, args.batch, commands[r], results), daemon=True)
        for r in range(args.procs)
    ]
    for w in workers:
        w.start()

    def ddp(name: str, n: int) -> float:
        for q in commands:
            q.put((name, n))
        return results.get(timeout=3600) / n

    torch.set_num_threads(args.threads)
    single = steps_of(build(), *batch(args.batch))

    def one_process(name: str, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            single[name]()
        return (time.perf_counter() - start) / n

    settings = {f"{m}_1proc": (one_process, m) for m in MODELS} | {f"{m}_ddp": (ddp, m) for m in MODELS}
    for run, model in settings.values():  # warm-up
        run(model, 1)
    times: dict[str, list[float]] = {k: [] for k in settings}
    order = list(settings)
    for r in range(args.rounds):
        for key in order[r % len(order):] + order[: r % len(order)]:
            run, model = settings[key]
            times[key].append(run(model, args.steps))
        log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    for q in commands:
        q.put(None)
    for w in workers:
        w.join(timeout=60)

    def ratio(fast: str, slow: str) -> dict:
        per_round = [a / b for a, b in zip(times[slow], times[fast])]
        return {"median": round(statistics.median(per_round), 3), "range": [round(min(per_round), 3), round(max(per_round), 3)]}

    print(json.dumps({
        "benchmark": "cpu_ddp",
        "what": f"SGD training step, global batch {args.batch}, NTU shape",
        "cores": cores,
        "single_process_threads": args.threads,
        "ddp_processes": args.procs,
        "rounds": args.rounds,
        "settings": {
            k: {"s_per_step": round(statistics.median(v), 3), "samples_per_s": round(args.batch / statistics.median(v), 2)}
            for k, v in times.items()
        },
        "speedup": {
            "mmcl_ddp_over_reference_1proc": ratio("mmcl_ddp", "reference_1proc"),
            "mmcl_1proc_over_reference_1proc": ratio("mmcl_1proc", "reference_1proc"),
            "reference_ddp_over_reference_1proc": ratio("reference_ddp", "reference_1proc"),
            "mmcl_ddp_over_mmcl_1proc": ratio("mmcl_ddp", "mmcl_1proc"),
            "mmcl_ddp_over_reference_ddp": ratio("mmcl_ddp", "reference_ddp"),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
