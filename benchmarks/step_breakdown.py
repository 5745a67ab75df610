"""Where mmcl's CTR-GCN spends a training step (or a batch-1 forward), operation by operation.

Prints ONE JSON object: for each ATen operation, milliseconds per step, calls per step and,
for matrix products, the GFLOP/s it reaches inside the network; then this machine's float32
matrix-product peak for comparison. NTU shape: 64 frames, 25 joints, 2 persons, 120 classes.

Each operation is timed at dispatch (wall clock around the kernel), so the figures add up to
a little less than the step's wall time; the per-operation timing itself costs a few percent.

    python benchmarks/step_breakdown.py                 # training step, batch 16
    python benchmarks/step_breakdown.py --infer         # optimize_for_inference, batch 1
    python benchmarks/step_breakdown.py --infer --bf16  # the same in bf16 (mmcl test --precision bf16)

``--bf16`` runs the training step under bf16 autocast and inference with
``optimize_for_inference(dtype=torch.bfloat16)``, and compares with the bf16 matrix-product peak:
worth it on CPUs with native bf16 only (AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_speed import CLASSES, FRAMES, JOINTS, PERSONS, gemm_peak_gflops, sgd, train_step  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN, optimize_for_inference  # noqa: E402

aten = torch.ops.aten
# Matrix products: (index of the first operand, index of the second) in the call's arguments.
_PRODUCTS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2), aten.baddbmm_.default: (1, 2)}


def _product_flops(func, args) -> int:
    """2 * M * N * K (times the batch) of a matrix product, 0 for anything else."""
    if func not in _PRODUCTS:
        return 0
    i, j = _PRODUCTS[func]
    a, b = args[i], args[j]
    batch = a.shape[0] if a.ndim == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class OpTimer(TorchDispatchMode):
    """Wall time, calls and matrix-product FLOPs per ATen operation while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        self.flops[name] += _product_flops(func, args)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infer", action="store_true", help="a batch-1 forward of optimize_for_inference instead")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 for training, 1 for --infer")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--top", type=int, default=15, help="operations listed by time")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (training) / bf16 weights (inference)")
    args = parser.parse_args()
    batch = args.batch or (1 if args.infer else 16)
    torch.manual_seed(0)
    model = CTRGCN(CLASSES, get_layout("ntu").adjacency())
    x = torch.randn(batch, 3, FRAMES, JOINTS, PERSONS)
    dtype = torch.bfloat16 if args.bf16 else None
    if args.infer:
        fast = optimize_for_inference(model.eval(), dtype=dtype)

        def step() -> None:
            fast(x)
    else:
        y = torch.randint(0, CLASSES, (batch,))
        def loss() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                return F.cross_entropy(model(x), y)

        step = train_step(model, sgd(model), loss)
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - start) / args.steps
    timer = OpTimer()
    with timer:
        for _ in range(args.steps):
            step()
    timed_total = sum(timer.seconds.values()) / args.steps
    ops = sorted(timer.seconds, key=timer.seconds.get, reverse=True)
    table = {}
    for name in ops[: args.top]:
        seconds = timer.seconds[name] / args.steps
        entry = {"ms_per_step": round(seconds * 1e3, 1), "share": round(seconds / timed_total, 3),
                 "calls_per_step": timer.calls[name] // args.steps}
        if timer.flops[name]:
            entry["gflops"] = round(timer.flops[name] / timer.seconds[name] / 1e9, 1)
        table[name] = entry
    products = sum(timer.seconds[n] for n in ops if timer.flops[n]) / args.steps
    print(json.dumps({
        "benchmark": "step_breakdown",
        "what": f"optimize_for_inference forward, batch {batch}" if args.infer else f"training step (SGD), batch {batch}",
        "precision": "bf16" if args.bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "wall_s_per_step": round(wall, 3),
        "timed_ops_s_per_step": round(timed_total, 3),
        "matrix_products_share": round(products / timed_total, 3),
        "matrix_product_gflop_per_step": round(sum(timer.flops.values()) / args.steps / 1e9, 2),
        "gemm_peak_gflops": round(gemm_peak_gflops(dtype=dtype or torch.float32), 1),
        "ops": table,
    }, indent=2))


if __name__ == "__main__":
    main()
