"""Where a CTR-GCN training step spends its GPU time, kernel by kernel (torch.profiler).

Prints ONE JSON object: for mmcl's model and the upstream-style reference, at each precision,
the step's wall time, the GPU's busy time within it (kernel time summed; well below the wall
time means the step waits for the host: kernel launches, Python), and the kernels that take the
most GPU time, as milliseconds per step and share of the busy time. NTU shape, batch 64.

    python benchmarks/gpu_profile.py
    python benchmarks/gpu_profile.py --precisions bf16 --top 25
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from gpu_speed import PRECISIONS, sgd_step  # noqa: E402
from model_speed import CLASSES, FRAMES, JOINTS, PERSONS  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN  # noqa: E402


def profile_step(step, steps: int, top: int) -> dict:
    """Wall time, GPU busy time and the ``top`` kernels of ``step``, per step."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / steps / 1000
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {
        "wall_ms": round(wall * 1000, 2),
        "gpu_busy_ms": round(busy, 2),
        "kernels_per_step": round(sum(e.count for e in kernels) / steps),
        "top": [
            {
                "kernel": e.key[:120],
                "ms": round(e.self_device_time_total / steps / 1000, 3),
                "share": round(e.self_device_time_total / steps / 1000 / busy, 3),
                "calls": e.count // steps,
            }
            for e in kernels[:top]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark profiles a GPU")
    device = torch.device("cuda")
    adjacency = get_layout("ntu").adjacency()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, FRAMES, JOINTS, PERSONS, generator=g).to(device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g).to(device)
    result: dict = {"benchmark": "gpu_profile", "device": torch.cuda.get_device_name(), "batch": args.batch}
    for name in args.precisions.split(","):
        for side, cls in (("reference", UpstreamCTRGCN), ("mmcl", CTRGCN)):
            torch.manual_seed(0)
            model = cls(CLASSES, adjacency).to(device).train()
            step = sgd_step(model, lambda m=model: F.cross_entropy(m(x).float(), y), device, PRECISIONS[name])
            result[f"{side}_{name}"] = profile_step(step, args.steps, args.top)
            print(f"{side} {name}: wall {result[f'{side}_{name}']['wall_ms']} ms", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
