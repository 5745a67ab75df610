"""Skeleton-only inference: scores for a split, metrics, score file and report.

Used by training (each test sample counted once across processes, through
``accelerator.gather_for_metrics``) and by ``mmcl test`` (single process, no Accelerate).
Nothing here imports transformers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcl import __version__
from mmcl.data.augment import BatchAugment
from mmcl.data.store import open_dataset
from mmcl.engine.build import build_skeleton_model, check_spec, eval_clips
from mmcl.engine.checkpoint import load_weights, read_model
from mmcl.engine.metrics import Metrics, classification_metrics
from mmcl.engine.report import format_report, plot_confusion, write_json, write_text
from mmcl.errors import MMCLError
from mmcl.models.inference import optimize_for_inference, slow_bf16_note
from mmcl.scores import save_scores

# ``mmcl test --precision``: the dtype the skeleton model runs in
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Predictions:
    """Scores of one split, one row per sample, in the loader's sample order."""

    names: list[str]
    scores: np.ndarray  # float32 [N, K] logits
    labels: np.ndarray  # int64 [N]


def logits_of(output: Any) -> torch.Tensor:
    """The classifier logits of a model output (a tensor, or MMCLModel's dict)."""
    return output["logits"] if isinstance(output, dict) else output


@torch.no_grad()  # not inference_mode: DDP may sync buffers in eval forward
def predict(
    model: Callable[[torch.Tensor], Any],
    loader: DataLoader,
    augment: Callable[[torch.Tensor, bool], torch.Tensor],
    names: Sequence[str],
    *,
    accelerator: Any = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "test",
) -> Predictions:
    """Run ``model`` (a module, or any callable such as ``optimize_for_inference``'s) over
    ``loader`` (items with ``x``, ``label``, ``index``).

    With an ``accelerator`` the loader is a prepared (sharded) one and the results of all
    processes are gathered, dropping the padding Accelerate adds to even out the last batch,
    so every sample is counted exactly once. ``names[index]`` names each row.
    """
    is_module = isinstance(model, torch.nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    scores, labels, index = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x, y, i = batch["x"], batch["label"], batch["index"]
        if accelerator is None and device is not None:
            x, y, i = x.to(device, non_blocking=True), y.to(device), i.to(device)
        logits = logits_of(model(augment(x, False))).float()
        if accelerator is not None:
            logits, y, i = accelerator.gather_for_metrics((logits, y, i))
        scores.append(logits.cpu())
        labels.append(y.cpu())
        index.append(i.cpu())
    if is_module:
        model.train(was_training)
    idx = torch.cat(index).numpy()
    return Predictions(
        names=[names[j] for j in idx],
        scores=torch.cat(scores).numpy().astype(np.float32),
        labels=torch.cat(labels).numpy().astype(np.int64),
    )


def score_meta(spec: dict[str, Any], *, benchmark: str, checkpoint: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The score file's meta (DESIGN.md): dataset, benchmark, stream, model, checkpoint, classes, version."""
    meta = {
        "dataset": spec.get("dataset"),
        "benchmark": benchmark,
        "stream": spec.get("stream"),
        "model": spec.get("architecture", "ctrgcn"),
        "checkpoint": checkpoint,
        "class_names": list(spec.get("class_names", [])),
        "mmcl_version": __version__,
    }
    meta.update(extra or {})
    return meta


def result_paths(scores_path: Path) -> dict[str, Path]:
    """Where the report files of a score file go: beside it, ``report.txt`` etc. for
    ``scores.npz`` and ``<stem>_report.txt`` etc. for any other name."""
    scores_path = Path(scores_path)
    prefix = "" if scores_path.stem == "scores" else f"{scores_path.stem}_"
    folder = scores_path.parent
    return {
        "scores": scores_path,
        "report": folder / f"{prefix}report.txt",
        "json": folder / f"{prefix}report.json",
        "confusion": folder / f"{prefix}confusion_matrix.png",
    }


def write_results(
    preds: Predictions,
    scores_path: Path,
    class_names: Sequence[str],
    meta: dict[str, Any],
    *,
    title: str = "",
) -> tuple[Metrics, str]:
    """Score file, text + JSON report and confusion-matrix PNG (see :func:`result_paths`)."""
    paths = result_paths(scores_path)
    paths["scores"].parent.mkdir(parents=True, exist_ok=True)
    save_scores(paths["scores"], preds.names, preds.scores, preds.labels, meta)
    metrics = classification_metrics(preds.scores, preds.labels, len(class_names))
    report = format_report(metrics, class_names, title=title)
    write_text(paths["report"], report)
    write_json(paths["json"], {**meta, **metrics.to_json()})
    plot_confusion(metrics.confusion, class_names, paths["confusion"],
                   title=f"{title}  top-1 {100 * metrics.top1:.2f}%".strip())
    return metrics, report


@dataclass
class EvalResult:
    """What ``mmcl test`` reports."""

    metrics: Metrics
    report: str
    paths: dict[str, Path]
    spec: dict[str, Any]


def evaluate_weights(
    weights: Path,
    data: Path,
    benchmark: str,
    out: Path,
    *,
    stream: str | None = None,
    split: str = "test",
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    compile: bool = False,
) -> EvalResult:
    """Evaluate an exported skeleton model (``model.safetensors``) on one split of a dataset.

    Skeletons only: the model is rebuilt from the spec stored with the weights, and the
    clips are cut the way its training run cut test clips. ``precision`` (fp32, bf16 or fp16)
    is the dtype the model runs in; ``compile`` runs CPU batches through inductor
    (:func:`mmcl.models.inference.compile_for_inference`).
    """
    if precision not in INFERENCE_DTYPES:
        raise MMCLError(f"precision {precision!r}: choose one of {', '.join(INFERENCE_DTYPES)}")
    weights, data = Path(weights), Path(data)
    tensors, meta = read_model(weights)
    spec = dict(meta["spec"])
    if stream is not None and stream != spec.get("stream"):
        raise MMCLError(
            f"{weights} was trained on the {spec.get('stream')!r} stream, not {stream!r}; "
            "drop --stream (it is read from the weights) or pass the weights of that stream"
        )
    ds = open_dataset(data)
    names = ds.split(benchmark, split)
    if not names:
        raise MMCLError(f"{data}: benchmark {benchmark!r} has an empty {split!r} split")
    expected = {"num_class": ds.num_classes, "in_channels": ds.channels, "num_person": spec.get("num_person"),
                "stream": spec.get("stream"), "layout": ds.layout.to_json()}
    check_spec(spec, expected, where=f"model {weights} (trained on {spec.get('dataset')}) and dataset {data}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if note := slow_bf16_note(dev, INFERENCE_DTYPES[precision]):
        print(f"{note}; use --precision fp32", file=sys.stderr)
    model = build_skeleton_model(spec)
    load_weights(model, tensors, where=str(weights))
    model.to(dev).eval()
    compiled = compile and dev.type == "cpu"  # compile_for_inference runs CPU batches only
    forward = optimize_for_inference(model, dtype=INFERENCE_DTYPES[precision], compile=compiled)
    clips = eval_clips(ds, names, spec)
    augment = BatchAugment(spec["recipe"], spec["stream"], ds.layout)
    loader = DataLoader(clips, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    preds = predict(forward, loader, augment, names, device=dev, progress=progress)
    spec_here = {**spec, "dataset": ds.name, "class_names": ds.class_names}
    out_meta = score_meta(spec_here, benchmark=benchmark, checkpoint=str(weights),
                          extra={"split": split, "data": str(data), "trained_epoch": meta.get("epoch"),
                                 "precision": precision, "compiled": compiled})
    title = f"{ds.name} {benchmark} {split}, {spec.get('stream')} stream, {weights}"
    metrics, report = write_results(preds, out, ds.class_names, out_meta, title=title)
    return EvalResult(metrics, report, result_paths(out), spec)
