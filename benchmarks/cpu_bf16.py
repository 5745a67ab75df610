"""CTR-GCN in bfloat16 on a CPU with native bf16 (AVX512-BF16 or AMX): mmcl against the
upstream-style reference, each in float32 and in bf16.

Prints ONE JSON object. NTU shape: 64 frames, 25 joints, 2 persons (two actors in every clip),
120 classes; both models start from the same weights. Four sides alternate round by round:

* training step (SGD) at ``--train-batch``: float32, and bf16 autocast with float32 master
  weights, as ``mmcl train --set train.mixed_precision=bf16`` (or ``accelerate launch
  --mixed_precision bf16``) runs it. Upstream's ``main.py`` has no mixed precision, so its own
  speed is the reference's float32 one; the reference under autocast is the same-precision
  comparison;
* inference at batch 1 and ``--infer-batch``: the reference in eval mode under ``no_grad``
  (float32, and bf16 autocast), mmcl through ``optimize_for_inference`` in float32 and with
  ``dtype=torch.bfloat16`` (``mmcl test --precision bf16``); with ``--compile``, also mmcl's
  bf16 model compiled by inductor (``compile=True``; tens of seconds to compile).

On a CPU without native bf16 a bf16 matrix product is many times slower than float32; the
script says so and stops unless ``--force`` is given.

    python benchmarks/cpu_bf16.py                  # ~4 minutes on 2 cores
    python benchmarks/cpu_bf16.py --compile --rounds 8
"""

from __future__ import annotations

import argparse
import copy
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
from model_speed import CLASSES, FRAMES, JOINTS, PERSONS, log, machine, sgd  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.heap import keep_freed_memory  # noqa: E402
from mmcl.models import CTRGCN, bf16_is_fast, load_upstream_state_dict, optimize_for_inference  # noqa: E402


def autocast(on: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)


def alternating(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every side, the sides taking turns within each round (the order
    reversed every other round), after one warm-up call each."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> dict:
    """Median and range of the per-round speed-up of ``fast`` over ``slow``."""
    r = [a / b for a, b in zip(times[slow], times[fast])]
    return {"median": round(statistics.median(r), 2), "range": [round(min(r), 2), round(max(r), 2)]}


def training_steps(reference: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One SGD step per call, per model and precision (each side on its own copy of the weights)."""

    def step(model: torch.nn.Module, bf16: bool) -> Callable[[], None]:
        model = copy.deepcopy(model).train()
        optimizer = sgd(model)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            optimizer.step()

        return run

    return {"reference_fp32": step(reference, False), "reference_bf16": step(reference, True),
            "mmcl_fp32": step(ours, False), "mmcl_bf16": step(ours, True)}


def inference_calls(reference: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, compile: bool) -> dict:
    reference = reference.eval()

    def ref(bf16: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad(), autocast(bf16):
                return reference(x).float()

        return run

    fp32 = optimize_for_inference(ours.eval())
    bf16 = optimize_for_inference(ours, dtype=torch.bfloat16)
    calls = {"reference_fp32": ref(False), "reference_bf16": ref(True),
             "mmcl_fp32": lambda: fp32(x), "mmcl_bf16": lambda: bf16(x)}
    if compile:
        compiled = optimize_for_inference(ours, dtype=torch.bfloat16, compile=True)
        start = time.perf_counter()
        compiled(x)
        log(f"  compiled mmcl bf16 for {tuple(x.shape)} in {time.perf_counter() - start:.1f} s")
        calls["mmcl_bf16_compiled"] = lambda: compiled(x)
    return calls


def summary(times: dict[str, list[float]], per: int, unit: str) -> dict:
    """Per-side rate (samples/s or ms per sample) and the speed-ups that matter."""
    if unit == "ms":
        rates = {f"{k}_ms_per_sample": round(1000 * statistics.median(v) / per, 1) for k, v in times.items()}
    else:
        rates = {f"{k}_samples_per_s": round(per / statistics.median(v), 2) for k, v in times.items()}
    best = "mmcl_bf16_compiled" if "mmcl_bf16_compiled" in times else "mmcl_bf16"
    out = {**rates,
           "mmcl_bf16_over_reference_fp32": ratio(times, "reference_fp32", "mmcl_bf16"),
           "mmcl_bf16_over_reference_bf16": ratio(times, "reference_bf16", "mmcl_bf16"),
           "mmcl_bf16_over_mmcl_fp32": ratio(times, "mmcl_fp32", "mmcl_bf16"),
           "mmcl_fp32_over_reference_fp32": ratio(times, "reference_fp32", "mmcl_fp32")}
    if best != "mmcl_bf16":
        out["mmcl_bf16_compiled_over_reference_fp32"] = ratio(times, "reference_fp32", best)
        out["mmcl_bf16_compiled_over_reference_bf16"] = ratio(times, "reference_bf16", best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per measurement (x2 at batch 1)")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="also time mmcl's bf16 model compiled by inductor")
    parser.add_argument("--force", action="store_true", help="run even where this CPU has no native bf16")
    args = parser.parse_args()
    if not bf16_is_fast() and not args.force:
        sys.exit("this CPU has no native bf16 (AVX512-BF16 or AMX), where a bf16 matrix product is many times "
                 "slower than float32; pass --force to time it anyway")
    keep_freed_memory()  # as mmcl train does; both models profit
    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()
    reference = UpstreamCTRGCN(CLASSES, adjacency)
    ours = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(ours, reference.state_dict())
    g = torch.Generator().manual_seed(1)
    shape = (FRAMES, JOINTS, PERSONS)
    x_train = torch.randn(args.train_batch, 3, *shape, generator=g)
    y_train = torch.randint(0, CLASSES, (args.train_batch,), generator=g)
    x1 = torch.randn(1, 3, *shape, generator=g)
    xb = torch.randn(args.infer_batch, 3, *shape, generator=g)

    log(f"training step, batch {args.train_batch}")
    train = alternating(training_steps(reference, ours, x_train, y_train), args.rounds)
    log("inference, batch 1")
    b1 = alternating(inference_calls(reference, ours, x1, args.compile), 2 * args.rounds)
    log(f"inference, batch {args.infer_batch}")
    bn = alternating(inference_calls(reference, ours, xb, args.compile), args.rounds)

    with torch.no_grad():
        ours.eval()
        exact = ours(xb[:8])
        low = optimize_for_inference(ours, dtype=torch.bfloat16)(xb[:8])
        with autocast(True):  # the training forward in bf16 autocast against float32
            train_low = copy.deepcopy(ours).train()(x_train[:8]).float()
        train_exact = copy.deepcopy(ours).train()(x_train[:8])

    print(json.dumps({
        "benchmark": "cpu_bf16",
        "shape": {"frames": FRAMES, "joints": JOINTS, "persons": PERSONS, "classes": CLASSES},
        "machine": {**machine(), "bf16_native": bf16_is_fast()},
        "rounds": args.rounds,
        f"train_batch{args.train_batch}": summary(train, args.train_batch, "samples/s"),
        "infer_batch1": summary(b1, 1, "ms"),
        f"infer_batch{args.infer_batch}": summary(bn, args.infer_batch, "samples/s"),
        "logits_max_rel_diff_bf16_vs_fp32": {
            "mmcl_inference": float((low - exact).abs().max() / exact.abs().max()),
            "mmcl_training_forward_autocast": float((train_low - train_exact).abs().max() / train_exact.abs().max()),
        },
    }, indent=2))


if __name__ == "__main__":
    main()
