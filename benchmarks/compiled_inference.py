"""Inference with the model compiled by inductor (``optimize_for_inference(compile=True)``)
against eager mmcl and the upstream-style reference, side by side on CPU.

Prints ONE JSON object. NTU shape: 64 frames, 25 joints, 2 persons, 120 classes; the same weights
on all sides (alpha moved off 0, so the learned topology term is computed).

* batch 1, two actors and one actor (slot 2 empty): ms per sample of the reference, eager mmcl
  and compiled mmcl, alternating; ratios are per-round medians;
* batch 64, two actors: eager against compiled mmcl, samples/s;
* the first call of each shape, which compiles (seconds), and the largest logit difference
  between compiled and eager, relative to the largest logit.

    python benchmarks/compiled_inference.py            # ~5 minutes on 2 cores
    python benchmarks/compiled_inference.py --quick

The compile cache (``/tmp/torchinductor_$USER``) makes a second run's compile times shorter.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from model_speed import (  # noqa: E402
    CLASSES,
    FRAMES,
    JOINTS,
    PERSONS,
    interleaved,
    latency,
    log,
    machine,
    no_grad_call,
    throughput,
    timed,
)

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN, load_upstream_state_dict, optimize_for_inference  # noqa: E402


def renamed(entry: dict, first: str, second: str) -> dict:
    """A :func:`model_speed.latency`/``throughput`` entry with its sides named ``first``/``second``."""
    return {k.replace("reference", first).replace("mmcl", second): v for k, v in entry.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b1_rounds, b64_rounds = (4, 2) if args.quick else (12, 3)

    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()
    reference = UpstreamCTRGCN(CLASSES, adjacency)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.5)
    ours = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(ours, reference.state_dict())
    reference.eval(), ours.eval()
    eager = optimize_for_inference(ours)
    compiled = optimize_for_inference(ours, compile=True)

    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1, 3, FRAMES, JOINTS, PERSONS, generator=g)
    x1_one = x1.clone()
    x1_one[..., 1] = 0
    x64 = torch.randn(64, 3, FRAMES, JOINTS, PERSONS, generator=g)

    compile_s, rel_diff = {}, {}
    for name, x in (("batch1", x1), ("one_actor_batch1", x1_one), ("batch64", x64)):
        compile_s[name] = round(timed(lambda x=x: compiled(x)), 1)  # first call of these shapes compiles
        expected = eager(x)
        rel_diff[name] = float((compiled(x) - expected).abs().max() / expected.abs().max())
        log(f"{name}: first call {compile_s[name]} s, max relative logit difference {rel_diff[name]:.2e}")

    ref_infer = no_grad_call(reference)
    b1 = interleaved(
        {
            "b1_reference": (lambda: ref_infer(x1), lambda: compiled(x1)),
            "b1_eager": (lambda: eager(x1), lambda: compiled(x1)),
            "one_reference": (lambda: ref_infer(x1_one), lambda: compiled(x1_one)),
            "one_eager": (lambda: eager(x1_one), lambda: compiled(x1_one)),
            "reference_eager": (lambda: ref_infer(x1), lambda: eager(x1)),
        },
        b1_rounds,
    )
    b64 = interleaved({"b64_eager": (lambda: eager(x64), lambda: compiled(x64))}, b64_rounds)["b64_eager"]

    result = {
        "benchmark": "compiled_inference",
        "shape": {"frames": FRAMES, "joints": JOINTS, "persons": PERSONS, "classes": CLASSES},
        "machine": machine(),
        "quick": args.quick,
        "first_call_s": compile_s,
        "compiled_vs_eager_max_rel_logit_diff": rel_diff,
        "batch1_two_actors": {
            "compiled_over_reference": renamed(latency(b1["b1_reference"]), "reference", "compiled"),
            "compiled_over_eager": renamed(latency(b1["b1_eager"]), "eager", "compiled"),
            "eager_over_reference": renamed(latency(b1["reference_eager"]), "reference", "eager"),
            "goal_over_reference": 3.0,
        },
        "batch1_one_actor": {
            "compiled_over_reference": renamed(latency(b1["one_reference"]), "reference", "compiled"),
            "compiled_over_eager": renamed(latency(b1["one_eager"]), "eager", "compiled"),
        },
        "batch64_two_actors_compiled_over_eager": renamed(throughput(b64, 64), "eager", "compiled"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
