"""CTR-GCN speed: mmcl's model against a plain upstream-style implementation, side by side.

Prints ONE JSON object. NTU shape: 64 frames, 25 joints, 2 persons, 120 classes.

* training: SGD step (forward, backward, update) at batch 16, samples/s;
* inference: ms per sample at batch 1 and samples/s at batch 64, the reference in eval mode
  versus ``mmcl.models.optimize_for_inference`` (BatchNorm folded, cache-sized chunks, empty
  person slots skipped), on two-actor inputs (both slots filled) and on one-actor inputs (slot 2
  all zeros, as in most NTU RGB+D 60 samples);
* MMCL co-learning overhead: a training step with FAM + FRM on cached features (RGB 512-d,
  text 768-d) against the skeleton-only step;
* the MMCL training step against the upstream MMCL one: the reference CTR-GCN plus a trainable
  Inception-v3 on one 299x299 RGB image per sample (the upstream RGB branch; its strips are at
  least this large, so this is the cheapest it can be) and the same FAM + FRM heads, versus
  mmcl's step on cached 2048-d RGB features;
* the logits of both models on the same weights (they compute the same function);
* compute efficiency: floating-point operations per training step and per batch-1 forward of
  each side (``torch.utils.flop_counter``), this machine's single-precision matrix-product peak
  (a 2048 x 2048 product on the same threads), and the GFLOP/s each side reaches at its median
  time. ``speedup_at_gemm_peak`` is what mmcl would reach if all its work ran at that peak: a
  goal above it cannot be met in float32 on this machine.

Reference and mmcl runs alternate round by round and the JSON reports per-round ratios (median),
so load from other processes on the machine affects both sides alike. On a shared machine,
``--threads 1`` gives the steadiest figures: a second OpenMP thread that waits for a busy core
slows every operation down.

    python benchmarks/model_speed.py            # ~3 minutes on 2 cores
    python benchmarks/model_speed.py --quick    # ~1 minute
    python benchmarks/model_speed.py --threads 1
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/model_speed.py

Both models share this process and so its memory allocator: glibc's default, or freed memory
kept for reuse with the variables above. ``benchmarks/allocator.py`` compares each side under
each setting in separate processes: the reference's batch-64 pass is dominated by page faults
under the default.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_ctrgcn import UpstreamCTRGCN  # noqa: E402
from _upstream_inception import InceptionV3  # noqa: E402

from mmcl.graphs import get_layout  # noqa: E402
from mmcl.models import CTRGCN, LossWeights, MMCLModel, bf16_is_fast, load_upstream_state_dict, optimize_for_inference  # noqa: E402
from mmcl.models.heads import FAM, FRM  # noqa: E402

CLASSES, FRAMES, JOINTS, PERSONS = 120, 64, 25, 2
TEXT_DIM, RGB_IMAGE = 768, 299
LOSS = LossWeights()  # CE + 0.2 * refined CE + 0.1 * contrastive, as mmcl trains
INCEPTION_PARAMETERS = 23_834_568  # torchvision's inception_v3(aux_logits=False), 1000 classes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    return step


def machine() -> dict:
    """The CPU side of the machine a benchmark ran on, and its load when the figures were taken."""
    return {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


def no_grad_call(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model(x)`` without autograd, as the reference runs at test time."""

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return call


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-4)


def interleaved(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]], rounds: int) -> dict[str, dict]:
    """Time each (reference, ours) pair alternately; per-round ratios reference/ours."""
    out: dict[str, dict] = {}
    for name, (ref, ours) in pairs.items():
        ref(), ours()  # warm-up
        times = {"reference": [], "mmcl": []}
        for r in range(rounds):
            order = [("reference", ref), ("mmcl", ours)] if r % 2 == 0 else [("mmcl", ours), ("reference", ref)]
            for side, fn in order:
                times[side].append(timed(fn))
        ratios = [a / b for a, b in zip(times["reference"], times["mmcl"])]
        out[name] = {
            "reference_s": statistics.median(times["reference"]),
            "mmcl_s": statistics.median(times["mmcl"]),
            "speedup_median": round(statistics.median(ratios), 3),
            "speedup_min": round(min(ratios), 3),
            "speedup_max": round(max(ratios), 3),
        }
        log(f"{name}: {out[name]}")
    return out


def throughput(timing: dict, batch: int) -> dict:
    """An :func:`interleaved` entry as samples/s of both sides and the speed-up."""
    return {
        "reference_samples_per_s": round(batch / timing["reference_s"], 2),
        "mmcl_samples_per_s": round(batch / timing["mmcl_s"], 2),
        "speedup": timing["speedup_median"],
        "speedup_range": [timing["speedup_min"], timing["speedup_max"]],
    }


def latency(timing: dict) -> dict:
    """An :func:`interleaved` entry at batch 1 as ms per sample of both sides and the speed-up."""
    return {
        "reference_ms_per_sample": round(timing["reference_s"] * 1000, 1),
        "mmcl_ms_per_sample": round(timing["mmcl_s"] * 1000, 1),
        "speedup": timing["speedup_median"],
        "speedup_range": [timing["speedup_min"], timing["speedup_max"]],
    }


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
    """FLOPs of ``out.baddbmm_(a, b)``: torch's counter has no formula for this in-place op."""
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[-1]


def gflop(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call of ``fn``, in GFLOP (matrix products and convolutions)."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_flops}) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def gemm_peak_gflops(size: int = 2048, rounds: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matrix-product rate in ``dtype`` on torch's threads: best of ``rounds``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    return 2 * size**3 / min(timed(lambda: torch.mm(a, b)) for _ in range(rounds)) / 1e9


def efficiency(ref_gflop: float, ours_gflop: float, timing: dict, peak: float) -> dict:
    """GFLOP and achieved GFLOP/s of both sides at their median times, and the speed-up mmcl
    would reach if all its operations ran at ``peak``."""
    return {
        "reference_gflop": round(ref_gflop, 2),
        "mmcl_gflop": round(ours_gflop, 2),
        "reference_gflops": round(ref_gflop / timing["reference_s"], 1),
        "mmcl_gflops": round(ours_gflop / timing["mmcl_s"], 1),
        "mmcl_fraction_of_peak": round(ours_gflop / timing["mmcl_s"] / peak, 3),
        "speedup_at_gemm_peak": round(timing["reference_s"] / (ours_gflop / peak), 2),
    }


def prefixed(prefix: str, entry: dict) -> dict:
    """``entry``'s figures under prefixed keys, without the range (for the one-actor summary)."""
    return {prefix + k: v for k, v in entry.items() if k != "speedup_range"}


class UpstreamMMCL(torch.nn.Module):
    """The upstream MMCL training model: CTR-GCN, a trainable Inception-v3 on the RGB image, FAM
    on its 2048-d feature and FRM on a cached text feature."""

    def __init__(self, adjacency) -> None:
        super().__init__()
        self.skeleton = UpstreamCTRGCN(CLASSES, adjacency)
        self.rgb = InceptionV3(aux_logits=False)
        self.fam = FAM(InceptionV3.feature_dim)
        self.frm = FRM(TEXT_DIM, CLASSES)

    def loss(self, x: torch.Tensor, image: torch.Tensor, text: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pooled = self.skeleton.pooled(x)
        logits = self.skeleton.fc(pooled)
        embedding = self.fam(self.rgb(image)[0])
        return (
            LOSS.ce * F.cross_entropy(logits, y)
            + LOSS.refine * F.cross_entropy(self.frm(logits, text), y)
            + LOSS.contrast * self.fam.loss(pooled, embedding)
        )


def same_function(adjacency, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Both models on the same non-trivial weights (alpha and the 1e-6 BN scales moved off their
    init, one SGD step taken): largest logit difference in train and eval mode, and of the
    optimized inference path, relative to the largest logit."""
    torch.manual_seed(3)
    reference = UpstreamCTRGCN(CLASSES, adjacency)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.5)
            elif name.endswith("gcn1.bn.weight"):
                p.fill_(1.0)
    train_step(reference, sgd(reference), lambda: F.cross_entropy(reference(x), y))()
    # Running statistics that fit the data (a cumulative average over one pass), so the eval-mode
    # network is well conditioned and the comparison measures the implementations, not rounding
    # blown up by statistics from another distribution.
    for m in reference.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        reference(x)
    ours = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(ours, reference.state_dict())
    with torch.no_grad():
        train_ref, train_ours = reference(x), ours(x)
        reference.eval(), ours.eval()
        eval_ref, eval_ours = reference(x), ours(x)
        fast = optimize_for_inference(ours)(x)
    scale = float(eval_ref.abs().max())
    return {
        "train_mode_max_rel_diff": float((train_ref - train_ours).abs().max()) / float(train_ref.abs().max()),
        "eval_mode_max_rel_diff": float((eval_ref - eval_ours).abs().max()) / scale,
        "optimized_inference_max_rel_diff": float((eval_ref - fast).abs().max()) / scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = (
        {"train": 2, "mmcl": 4, "b1": 4, "b64": 2, "upstream_mmcl": 1}
        if args.quick
        else {"train": 5, "mmcl": 5, "b1": 10, "b64": 3, "upstream_mmcl": 3}
    )
    torch.manual_seed(0)
    adjacency = get_layout("ntu").adjacency()

    reference = UpstreamCTRGCN(CLASSES, adjacency)
    ours = CTRGCN(CLASSES, adjacency)
    load_upstream_state_dict(ours, reference.state_dict())  # the same weights
    shape = (FRAMES, JOINTS, PERSONS)
    g = torch.Generator().manual_seed(1)
    x_train = torch.randn(args.train_batch, 3, *shape, generator=g)
    y_train = torch.randint(0, CLASSES, (args.train_batch,), generator=g)
    x1 = torch.randn(1, 3, *shape, generator=g)
    x64 = torch.randn(args.infer_batch, 3, *shape, generator=g)
    # one-actor samples (most of NTU RGB+D 60): the second person slot is all zeros
    x1_one, x64_one = x1.clone(), x64.clone()
    x1_one[..., 1] = 0
    x64_one[..., 1] = 0

    agreement = same_function(adjacency, x_train[:4], y_train[:4])

    # Training step, batch 16.
    reference.train(), ours.train()
    # (counted on throw-away copies: the timed models' BatchNorm statistics and gradients stay untouched)
    train_gflop = {
        name: gflop(lambda m=m: F.cross_entropy(m(x_train), y_train).backward())
        for name, m in (("reference", copy.deepcopy(reference)), ("mmcl", copy.deepcopy(ours)))
    }
    ref_step = train_step(reference, sgd(reference), lambda: F.cross_entropy(reference(x_train), y_train))
    our_step = train_step(ours, sgd(ours), lambda: F.cross_entropy(ours(x_train), y_train))
    train = interleaved({"train_step": (ref_step, our_step)}, rounds["train"])["train_step"]

    # Inference.
    reference.eval(), ours.eval()
    fast = optimize_for_inference(ours)
    ref_infer = no_grad_call(reference)
    infer = interleaved(
        {
            "infer_batch1": (lambda: ref_infer(x1), lambda: fast(x1)),
            "one_actor_batch1": (lambda: ref_infer(x1_one), lambda: fast(x1_one)),
        },
        rounds["b1"],
    )
    infer.update(interleaved(
        {
            f"infer_batch{args.infer_batch}": (lambda: ref_infer(x64), lambda: fast(x64)),
            "one_actor_batch64": (lambda: ref_infer(x64_one), lambda: fast(x64_one)),
        },
        rounds["b64"],
    ))
    b1, b64 = infer["infer_batch1"], infer[f"infer_batch{args.infer_batch}"]
    # (grad mode on for the reference count: FLOPs are the same, and the counter's module tracker
    # cannot follow a no-grad forward)
    b1_gflop = {"reference": gflop(lambda: copy.deepcopy(reference)(x1)), "mmcl": gflop(lambda: fast(x1))}
    peak = gemm_peak_gflops()
    one1, one64 = infer["one_actor_batch1"], infer["one_actor_batch64"]

    # MMCL co-learning overhead with cached features: skeleton-only step vs FAM + FRM step.
    torch.manual_seed(2)
    plain = CTRGCN(CLASSES, adjacency).train()
    colearn = MMCLModel(CTRGCN(CLASSES, adjacency), rgb_dim=512, text_dim=768).train()
    rgb = torch.randn(args.train_batch, 512, generator=g)
    text = torch.randn(args.train_batch, 768, generator=g)
    plain_step = train_step(plain, sgd(plain), lambda: F.cross_entropy(plain(x_train), y_train))
    mmcl_step = train_step(colearn, sgd(colearn), lambda: colearn.losses(colearn(x_train, rgb, text), y_train)["total"])
    over = interleaved({"mmcl_overhead": (mmcl_step, plain_step)}, rounds["mmcl"])["mmcl_overhead"]

    # The whole MMCL training step against upstream's, which trains Inception-v3 on every step.
    upstream = UpstreamMMCL(adjacency).train()
    if sum(p.numel() for p in upstream.rgb.parameters()) != INCEPTION_PARAMETERS:
        raise SystemExit("benchmarks/_upstream_inception.py does not have Inception-v3's parameter count")
    images = torch.randn(args.train_batch, 3, RGB_IMAGE, RGB_IMAGE, generator=g)
    rgb_cached = torch.randn(args.train_batch, InceptionV3.feature_dim, generator=g)
    colearn_2048 = MMCLModel(CTRGCN(CLASSES, adjacency), rgb_dim=InceptionV3.feature_dim, text_dim=TEXT_DIM).train()
    upstream_step = train_step(upstream, sgd(upstream), lambda: upstream.loss(x_train, images, text, y_train))
    cached_step = train_step(
        colearn_2048, sgd(colearn_2048), lambda: colearn_2048.losses(colearn_2048(x_train, rgb_cached, text), y_train)["total"]
    )
    vs_upstream = interleaved({"mmcl_step": (upstream_step, cached_step)}, rounds["upstream_mmcl"])["mmcl_step"]

    result = {
        "benchmark": "model_speed",
        "shape": {"frames": FRAMES, "joints": JOINTS, "persons": PERSONS, "classes": CLASSES},
        "machine": {
            **machine(),
            "bf16_native": bf16_is_fast(),
            "malloc_mmap_max": os.environ.get("MALLOC_MMAP_MAX_", "glibc default"),
        },
        "quick": args.quick,
        "train_batch16": {**throughput(train, args.train_batch), "goal": 2.0},
        "infer_batch1": latency(b1),
        f"infer_batch{args.infer_batch}": {**throughput(b64, args.infer_batch), "goal": 3.0},
        "one_actor_inference": {
            "note": "second person slot all zeros, as in most NTU60 samples; mmcl skips empty slots",
            **prefixed("batch1_", latency(one1)),
            **prefixed(f"batch{args.infer_batch}_", throughput(one64, args.infer_batch)),
        },
        "mmcl_colearning_overhead": {
            "skeleton_only_step_s": round(over["mmcl_s"], 3),
            "mmcl_step_s": round(over["reference_s"], 3),
            "overhead_percent": round((over["speedup_median"] - 1) * 100, 1),
            "goal_percent": 15.0,
        },
        "mmcl_step_vs_upstream_mmcl": {
            "note": f"upstream: CTR-GCN + trainable Inception-v3 on a {RGB_IMAGE}x{RGB_IMAGE} image per sample "
            "+ FAM + FRM; mmcl: FAM on cached 2048-d features + FRM",
            **throughput(vs_upstream, args.train_batch),
        },
        "compute": {
            "gemm_peak_gflops": round(peak, 1),
            "train_batch16": efficiency(train_gflop["reference"], train_gflop["mmcl"], train, peak),
            "infer_batch1": efficiency(b1_gflop["reference"], b1_gflop["mmcl"], b1, peak),
        },
        "same_function": agreement,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
