"""DDP with torch.compile on GPUs: does ``--dynamo_mode reduce-overhead`` (CUDA graphs) still pay
when the step is split across processes, and does it compute the eager step?

Prints ONE JSON object. Each of ``--processes`` processes trains mmcl's CTR-GCN (NTU shape: 64
frames, 25 joints, 2 persons, 120 classes) on its share of a global batch of ``--batch``, under
bf16 autocast and SGD, wrapped as ``accelerate launch --dynamo_backend inductor`` wraps it:
``torch.compile(DistributedDataParallel(model))``. Three fresh runs from the same weights and
batches: eager, inductor's default mode, and reduce-overhead. Per run: the first step's time
(the compile), the first losses, and steady-state samples/s.

With at least as many GPUs as processes, each process takes its own GPU over NCCL. With fewer
(one GPU, say), the processes share GPU 0 over gloo, which copies every gradient bucket through
host memory: then the run checks that the launch works and computes the same losses, and its
samples/s are not a multi-GPU speed.

    python benchmarks/gpu_ddp_compile.py                   # 2 processes; ~5 minutes, mostly compiling
    python benchmarks/gpu_ddp_compile.py --processes 8 --batch 256
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from mmcl.graphs import get_layout
from mmcl.models import CTRGCN

MODES = {"eager": None, "default": "default", "reduce-overhead": "reduce-overhead"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_mode(mode: str | None, rank: int, world: int, device: torch.device, args: argparse.Namespace) -> dict:
    """One fresh model trained ``args.steps`` steps in ``mode``: this process's timings and losses."""
    torch.manual_seed(0)
    model = CTRGCN(120, get_layout("ntu").adjacency()).to(device).train()
    ddp = DistributedDataParallel(model, device_ids=[device.index])
    step_model = ddp if mode is None else torch.compile(ddp, mode=mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-4)
    share = args.batch // world
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, 64, 25, 2, generator=g), torch.randint(0, 120, (args.batch,), generator=g))
               for _ in range(4)]
    batches = [(x[rank * share:(rank + 1) * share].to(device), y[rank * share:(rank + 1) * share].to(device))
               for x, y in batches]

    def step(i: int) -> torch.Tensor:
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(step_model(x).float(), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    losses, times = [], []
    for i in range(args.steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        losses.append(step(i))
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    dist.barrier()
    steady = sorted(times[3:])[len(times[3:]) // 2]  # median step after the first three
    mean_losses = torch.stack(losses[:5]).float()
    dist.all_reduce(mean_losses)  # the global batch's loss per step (shares are equal)
    return {"first_step_s": round(times[0], 1), "steady_samples_per_s": round(args.batch / steady, 1),
            "losses": [round(v, 5) for v in (mean_losses / world).tolist()]}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    own_gpus = torch.cuda.device_count() >= world
    device = torch.device("cuda", rank if own_gpus else 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl" if own_gpus else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    result = {}
    for name, mode in MODES.items():
        result[name] = _run_mode(mode, rank, world, device, args)
        if rank == 0:
            print(f"[gpu_ddp_compile] {name}: {result[name]}", file=sys.stderr, flush=True)
    if rank == 0:
        Path(out).write_text(json.dumps({"backend": dist.get_backend(), "gpus_used": world if own_gpus else 1,
                                         "runs": result}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="global batch, split evenly over the processes")
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_ddp_compile.py needs a CUDA GPU")
    if args.batch % args.processes:
        sys.exit(f"--batch {args.batch} does not split evenly over {args.processes} processes")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(_worker, args=(args.processes, _free_port(), args, out), nprocs=args.processes)
        result = json.loads(Path(out).read_text())
    runs = result["runs"]
    eager = runs["eager"]["steady_samples_per_s"]
    print(json.dumps({
        "benchmark": "gpu_ddp_compile", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "processes": args.processes, "global_batch": args.batch, "precision": "bf16", **result,
        "over_eager": {name: round(r["steady_samples_per_s"] / eager, 2) for name, r in runs.items()},
        "max_loss_diff_vs_eager": {name: max(abs(a - b) for a, b in zip(r["losses"], runs["eager"]["losses"]))
                                   for name, r in runs.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
