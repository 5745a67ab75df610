"""Training with empty person slots shared (``train.skip_empty_persons``), side by side.

Prints ONE JSON object. NTU shape (64 frames, 25 joints, 2 person slots, 60 classes), one SGD
step (forward, backward, update) per call, three implementations alternating round by round on
the same batch and the same weights:

* ``reference``: the plain upstream-style CTR-GCN (``_upstream_ctrgcn.py``), every slot computed;
* ``mmcl_full``: mmcl's CTR-GCN with ``skip_empty_persons`` off, every slot computed;
* ``mmcl_shared``: mmcl's CTR-GCN as ``mmcl train`` runs it on CPU: all empty slots of the batch
  run as one stream, counted once per slot in BatchNorm (the same step, up to float rounding;
  ``logits_max_relative_difference`` checks it on the timed batch).

for batches with different shares of one-actor samples (second slot all zeros):

* ``ntu60``: 2 two-actor samples in 11, as in NTU RGB+D 60, whose classes A50-A60 (11 of 60,
  about equally frequent) are the two-person interactions; CTR-GCN's NTU60 data leaves slot 2 of
  the others zero (its NTU120 data copies actor 1 there instead, so nothing is shared);
* ``one_actor``: every sample has one actor (the upper bound: nearly half the streams go);
* ``half``: half of the samples have two actors.

Like ``mmcl train``, the process keeps freed memory in the heap (``mmcl.heap``), which all three
share; ``--default-malloc`` leaves glibc's default.

    python benchmarks/empty_slots.py                 # ~6 minutes on 2 cores
    python benchmarks/empty_slots.py --rounds 2 --batch 8
    python benchmarks/empty_slots.py --bf16          # bf16 autocast, on a CPU with native bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from model_speed import log, machine, sgd, timed, train_step  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.heap import keep_freed_memory  # noqa: E402
from mmcl.models import CTRGCN, load_upstream_state_dict  # noqa: E402

CLASSES, FRAMES, JOINTS, PERSONS = 60, 64, 25, 2
TWO_ACTOR_SHARE = {"ntu60": 11 / 60, "half": 0.5, "one_actor": 0.0}


def batch(size: int, two_actor_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random NTU-shaped batch whose first ``round(size * share)`` samples have two actors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, FRAMES, JOINTS, PERSONS, generator=g)
    x[round(size * two_actor_share):, ..., 1] = 0
    return x, torch.randint(0, CLASSES, (size,), generator=g)


def compare(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, rounds: int, bf16: bool) -> dict:
    """Time one training step of each model, alternating (rotated order each round)."""

    def loss(model: torch.nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return F.cross_entropy(model(x).float(), y)

    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = train_step(model, sgd(model), lambda m=model: loss(m))
        steps[name]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(steps[name]))
    ratio = lambda a, b: [p / q for p, q in zip(times[a], times[b])]  # noqa: E731
    out = {f"{name}_samples_per_s": round(len(x) / statistics.median(t), 2) for name, t in times.items()}
    for a, b in (("mmcl_full", "mmcl_shared"), ("reference", "mmcl_shared"), ("reference", "mmcl_full")):
        r = ratio(a, b)
        out[f"{b}_over_{a}"] = round(statistics.median(r), 3)
        out[f"{b}_over_{a}_range"] = [round(min(r), 3), round(max(r), 3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="samples per training step (default 16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    parser.add_argument("--bf16", action="store_true",
                        help="every side under CPU bf16 autocast (train.mixed_precision=bf16; for CPUs with native bf16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    heap_kept = False if args.default_malloc else keep_freed_memory()
    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()
    reference = UpstreamCTRGCN(CLASSES, adjacency)
    full = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(full, reference.state_dict())  # the same weights
    shared = copy.deepcopy(full)
    shared.skip_empty_persons = True

    results: dict = {"machine": machine(), "freed_memory_kept": heap_kept, "batch": args.batch, "rounds": args.rounds,
                     "precision": "bf16 autocast" if args.bf16 else "float32"}
    for i, (name, share) in enumerate(TWO_ACTOR_SHARE.items()):
        x, y = batch(args.batch, share, seed=i)
        one_actor = int((x[..., 1] == 0).flatten(1).all(1).sum())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            # the same function: train-mode logits of fresh copies, both ways
            a, b = copy.deepcopy(full).train()(x).float(), copy.deepcopy(shared).train()(x).float()
        entry = {
            "one_actor_samples": one_actor,
            "streams_run_shared": 2 * args.batch - one_actor + (1 if one_actor > 1 else 0),
            "streams_run_full": 2 * args.batch,
            "logits_max_relative_difference": float((a - b).abs().max() / a.abs().max()),
        }
        models = {"reference": copy.deepcopy(reference), "mmcl_full": copy.deepcopy(full),
                  "mmcl_shared": copy.deepcopy(shared)}
        entry.update(compare(models, x, y, args.rounds, args.bf16))
        log(f"{name}: {entry}")
        results[name] = entry
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
