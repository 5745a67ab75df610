"""CTR-GCN on a GPU: mmcl against the upstream-style reference at fp32, tf32, bf16 and fp16.

Prints ONE JSON object. NTU shape: 64 frames, 25 joints, 2 persons, 120 classes; both models
start from the same weights. Per precision (fp32: PyTorch's defaults; tf32: float32 with TF32
matrix products; bf16 / fp16: autocast, as ``accelerate launch --mixed_precision bf16|fp16`` runs
``mmcl train``, with a gradient scaler for fp16):

* training: SGD step (forward, backward, update) at ``--train-batch`` (default 64, the NTU60
  recipe), samples/s, and the step's peak GPU memory above the model and optimizer state;
* inference: ms per sample at batch 1, samples/s at batch ``CUDA_GRAPH_MAX_BATCH`` and at
  ``--infer-batch`` (default 256), the reference in eval mode under ``no_grad`` against
  ``mmcl.models.optimize_for_inference``, two actors per sample, and the pass's peak memory.
  mmcl replays small batches from a CUDA graph (a batch-1 forward otherwise waits on ~400 kernel
  launches), so batch 1 is also timed with mmcl eager, and with the reference graphed too;
* MMCL's co-learning overhead per training step (FAM + FRM on cached 512-d RGB and 768-d text
  features against the skeleton-only step), and the MMCL step against upstream MMCL's, which
  trains Inception-v3 on a 299 x 299 image per sample;
* how far bf16 / fp16 logits are from fp32 ones, and mmcl's from the reference's;
* with ``--compile``, both training steps again under ``torch.compile`` (minutes of compiling).

Reference and mmcl alternate round by round (``--rounds`` rounds of ``--iters`` calls, the GPU
synchronised around each round), and the JSON gives the median per-round speed-up.

    python benchmarks/gpu_speed.py                     # ~4 minutes on one H100 (--rounds 5 --iters 8: ~3)
    python benchmarks/gpu_speed.py --precisions bf16 --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from _upstream_inception import InceptionV3  # noqa: E402
from model_speed import CLASSES, FRAMES, JOINTS, PERSONS, RGB_IMAGE, TEXT_DIM, UpstreamMMCL, log, sgd  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN, MMCLModel, load_upstream_state_dict, optimize_for_inference  # noqa: E402
from mmcl.models.inference import CUDA_GRAPH_MAX_BATCH, CudaGraphed  # noqa: E402

# autocast dtype per precision; "tf32" is float32 with TF32 tensor-core matrix products
# (``torch.backends.cuda.matmul.allow_tf32``). cuDNN convolutions use TF32 in every float32 run:
# PyTorch's default, so the reference's 1x1 convolutions run on tensor cores even at "fp32".
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype``, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Wall time of ``iters`` calls of ``fn``, the device synchronised before and after, per call."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def alternating(ref: Callable[[], object], ours: Callable[[], object], rounds: int, iters: int, device: torch.device) -> dict:
    """Median seconds per call of each side over ``rounds`` alternating rounds, and the median
    per-round ratio reference / mmcl."""
    for fn in (ref, ours):  # warm-up: cuDNN / cuBLAS heuristics, allocator pools
        seconds_per_call(fn, 3, device)
    times: dict[str, list[float]] = {"reference": [], "mmcl": []}
    for r in range(rounds):
        order = [("reference", ref), ("mmcl", ours)] if r % 2 == 0 else [("mmcl", ours), ("reference", ref)]
        for side, fn in order:
            times[side].append(seconds_per_call(fn, iters, device))
    ratios = [a / b for a, b in zip(times["reference"], times["mmcl"])]
    return {
        "reference_s": statistics.median(times["reference"]),
        "mmcl_s": statistics.median(times["mmcl"]),
        "speedup": round(statistics.median(ratios), 3),
        "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak GPU memory one call of ``fn`` allocates above what was allocated before it, MiB
    (None off CUDA)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)


def sgd_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device, dtype: torch.dtype | None):
    """One SGD update under autocast, with a gradient scaler for fp16 (as Accelerate does)."""
    optimizer = sgd(model)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = loss_fn()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def throughput(timing: dict, batch: int) -> dict:
    """An :func:`alternating` entry as samples/s of both sides (model_speed's twin reads its own
    timing keys and rounds for CPU rates)."""
    return {
        "reference_samples_per_s": round(batch / timing["reference_s"], 1),
        "mmcl_samples_per_s": round(batch / timing["mmcl_s"], 1),
        "speedup": timing["speedup"],
        "speedup_range": timing["speedup_range"],
    }


def latency(timing: dict) -> dict:
    """An :func:`alternating` entry at batch 1 as ms per call, to the microsecond (GPU latencies
    are around a millisecond; model_speed rounds to 0.1 ms)."""
    return {
        "reference_ms": round(timing["reference_s"] * 1000, 3),
        "mmcl_ms": round(timing["mmcl_s"] * 1000, 3),
        "speedup": timing["speedup"],
        "speedup_range": timing["speedup_range"],
    }


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of ``a`` from ``b``, relative to ``b``'s largest magnitude."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max())


def bench_precision(name: str, dtype: torch.dtype | None, device: torch.device, args: argparse.Namespace) -> dict:
    """Every measurement of the module docstring at one precision."""
    log(f"[{name}]")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    rounds, iters = args.rounds, args.iters
    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()
    reference = UpstreamCTRGCN(CLASSES, adjacency).to(device)
    ours = CTRGCN(CLASSES, adjacency).to(device)
    load_upstream_state_dict(ours, reference.state_dict())
    g = torch.Generator().manual_seed(1)
    shape = (FRAMES, JOINTS, PERSONS)
    x_train = torch.randn(args.train_batch, 3, *shape, generator=g).to(device)
    y_train = torch.randint(0, CLASSES, (args.train_batch,), generator=g).to(device)
    x1 = torch.randn(1, 3, *shape, generator=g).to(device)
    x_big = torch.randn(args.infer_batch, 3, *shape, generator=g).to(device)
    out: dict = {}

    # Training.
    reference.train(), ours.train()
    ref_step = sgd_step(reference, lambda: F.cross_entropy(reference(x_train).float(), y_train), device, dtype)
    our_step = sgd_step(ours, lambda: F.cross_entropy(ours(x_train).float(), y_train), device, dtype)
    train = alternating(ref_step, our_step, rounds, iters, device)
    out[f"train_batch{args.train_batch}"] = {
        **throughput(train, args.train_batch),
        "reference_step_peak_mib": peak_mib(ref_step, device),
        "mmcl_step_peak_mib": peak_mib(our_step, device),
    }
    log(f"  train: {out[f'train_batch{args.train_batch}']}")

    # Inference, on the same weights (training above changed each model in its own way).
    load_upstream_state_dict(ours, reference.state_dict())
    reference.eval(), ours.eval()
    fast = optimize_for_inference(ours)  # batches up to CUDA_GRAPH_MAX_BATCH replay a CUDA graph
    eager = optimize_for_inference(ours, cuda_graph_max_batch=0)

    def ref_infer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, dtype):
            return reference(x)

    def our_infer(x: torch.Tensor, predict=fast) -> torch.Tensor:
        with autocast(device, dtype):
            return predict(x)

    b1 = alternating(lambda: ref_infer(x1), lambda: our_infer(x1), rounds, 4 * iters, device)
    big = alternating(lambda: ref_infer(x_big), lambda: our_infer(x_big), rounds, iters, device)
    out["infer_batch1"] = latency(b1)
    out[f"infer_batch{args.infer_batch}"] = {
        **throughput(big, args.infer_batch),
        "reference_peak_mib": peak_mib(lambda: ref_infer(x_big), device),
        "mmcl_peak_mib": peak_mib(lambda: our_infer(x_big), device),
    }
    if device.type == "cuda":
        out["infer_batch1_mmcl_eager"] = latency(
            alternating(lambda: ref_infer(x1), lambda: our_infer(x1, eager), rounds, 4 * iters, device)
        )
        ref_graph = CudaGraphed(reference)  # the reference gets a CUDA graph too: the fair comparison

        def ref_graphed(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(device, dtype):
                return ref_graph(x)

        out["infer_batch1_both_graphed"] = latency(
            alternating(lambda: ref_graphed(x1), lambda: our_infer(x1), rounds, 4 * iters, device)
        )
        out["infer_batch1_graph_vs_eager_max_rel_diff"] = rel_diff(our_infer(x1), our_infer(x1, eager))
        small = x_big[: CUDA_GRAPH_MAX_BATCH]
        out[f"infer_batch{CUDA_GRAPH_MAX_BATCH}"] = {
            **throughput(alternating(lambda: ref_infer(small), lambda: our_infer(small), rounds, iters, device), len(small)),
            "mmcl_eager_samples_per_s": round(len(small) / seconds_per_call(lambda: our_infer(small, eager), iters, device), 1),
        }
    log(f"  inference: { {k: v for k, v in out.items() if k.startswith('infer')} }")

    # Agreement: mmcl against the reference at this precision, and this precision against fp32.
    with torch.no_grad():
        ref_logits, our_logits = ref_infer(x_big[:32]), our_infer(x_big[:32])
        fp32_logits = eager(x_big[:32])
    out["logits"] = {
        "mmcl_vs_reference_max_rel_diff": rel_diff(our_logits, ref_logits),
        "mmcl_vs_mmcl_fp32_max_rel_diff": rel_diff(our_logits, fp32_logits),
    }

    # MMCL co-learning overhead with cached features.
    torch.manual_seed(2)
    plain = CTRGCN(CLASSES, adjacency).to(device).train()
    colearn = MMCLModel(CTRGCN(CLASSES, adjacency), rgb_dim=512, text_dim=TEXT_DIM).to(device).train()
    rgb = torch.randn(args.train_batch, 512, generator=g).to(device)
    text = torch.randn(args.train_batch, TEXT_DIM, generator=g).to(device)
    plain_step = sgd_step(plain, lambda: F.cross_entropy(plain(x_train).float(), y_train), device, dtype)
    mmcl_step = sgd_step(colearn, lambda: colearn.losses(colearn(x_train, rgb, text), y_train)["total"], device, dtype)
    over = alternating(mmcl_step, plain_step, rounds, iters, device)
    out["mmcl_colearning_overhead_percent"] = round((over["speedup"] - 1) * 100, 1)
    # Per-round spread: a host-bound GPU step varies by more than the heads cost.
    out["mmcl_colearning_overhead_range_percent"] = [round((r - 1) * 100, 1) for r in over["speedup_range"]]

    # The MMCL step against upstream MMCL's (trainable Inception-v3 on a 299 x 299 image per sample).
    upstream = UpstreamMMCL(adjacency).to(device).train()
    images = torch.randn(args.train_batch, 3, RGB_IMAGE, RGB_IMAGE, generator=g).to(device)
    rgb_cached = torch.randn(args.train_batch, InceptionV3.feature_dim, generator=g).to(device)
    colearn_2048 = MMCLModel(CTRGCN(CLASSES, adjacency), rgb_dim=InceptionV3.feature_dim, text_dim=TEXT_DIM)
    colearn_2048 = colearn_2048.to(device).train()
    upstream_step = sgd_step(upstream, lambda: upstream.loss(x_train, images, text, y_train), device, dtype)
    cached_step = sgd_step(
        colearn_2048, lambda: colearn_2048.losses(colearn_2048(x_train, rgb_cached, text), y_train)["total"], device, dtype
    )
    vs_upstream = alternating(upstream_step, cached_step, max(2, rounds // 2), max(2, iters // 2), device)
    out["mmcl_step_vs_upstream_mmcl"] = {
        **throughput(vs_upstream, args.train_batch),
        "upstream_step_peak_mib": peak_mib(upstream_step, device),
        "mmcl_step_peak_mib": peak_mib(cached_step, device),
    }
    log(f"  co-learning: overhead {out['mmcl_colearning_overhead_percent']} %, vs upstream {out['mmcl_step_vs_upstream_mmcl']}")

    if args.compile:
        # Both training steps with torch.compile (inductor, --compile-mode), as `accelerate launch
        # --dynamo_backend inductor [--dynamo_mode M]` would compile them; the first call's time is
        # the compile time.
        reference.train(), ours.train()
        mode = args.compile_mode
        compiled = {"reference": torch.compile(reference, mode=mode), "mmcl": torch.compile(ours, mode=mode)}
        steps, first = {}, {}
        for side, model in (("reference", reference), ("mmcl", ours)):
            steps[side] = sgd_step(model, lambda m=compiled[side]: F.cross_entropy(m(x_train).float(), y_train), device, dtype)
            first[side] = seconds_per_call(steps[side], 1, device)
        timing = alternating(steps["reference"], steps["mmcl"], rounds, iters, device)
        out[f"train_batch{args.train_batch}_compiled"] = {
            **throughput(timing, args.train_batch),
            "reference_compile_s": round(first["reference"], 1),
            "mmcl_compile_s": round(first["mmcl"], 1),
            "mmcl_compiled_vs_mmcl_eager": round(train["mmcl_s"] / timing["mmcl_s"], 3),
            "reference_compiled_vs_reference_eager": round(train["reference_s"] / timing["reference_s"], 3),
            "compile_mode": mode or "default",
        }
        log(f"  compiled training: {out[f'train_batch{args.train_batch}_compiled']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu only to try the script)")
    parser.add_argument("--precisions", default="fp32,tf32,bf16,fp16", help="comma-separated subset of fp32,tf32,bf16,fp16")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per measurement")
    parser.add_argument("--iters", type=int, default=10, help="calls per round (x4 at batch 1)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 calls")
    parser.add_argument("--compile", action="store_true", help="also time both training steps under torch.compile")
    parser.add_argument(
        "--compile-mode",
        default=None,
        choices=["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode for --compile (default: inductor's default mode)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters = 2, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures a GPU (pass --device cpu only to try the script)")
    names = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PRECISIONS))
    if unknown:
        raise SystemExit(f"unknown precision(s) {unknown}; choose from {sorted(PRECISIONS)}")
    result = {
        "benchmark": "gpu_speed",
        "shape": {"frames": FRAMES, "joints": JOINTS, "persons": PERSONS, "classes": CLASSES},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rounds": args.rounds,
        "iters": args.iters,
        "precisions": {name: bench_precision(name, PRECISIONS[name], device, args) for name in names},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
