"""Turn a config into the pieces a run needs: datasets, co-learning features, model, schedule.

Everything here is plain construction with clear errors; the loop itself is in
:mod:`mmcl.engine.trainer`. Nothing here imports transformers unless the config asks for
an end-to-end image encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from mmcl.config import Config
from mmcl.data.augment import BatchAugment
from mmcl.data.features import load_features
from mmcl.data.loading import SkeletonClips
from mmcl.data.store import SkeletonDataset, open_dataset
from mmcl.data.streams import check_stream
from mmcl.errors import MMCLError
from mmcl.graphs import Layout


@dataclass
class DataBundle:
    """The opened dataset and the two splits of one benchmark."""

    ds: SkeletonDataset
    train: SkeletonClips
    test: SkeletonClips
    augment: BatchAugment
    feature_dims: dict[str, int]


def open_data(cfg: Config, *, with_train: bool = True) -> tuple[SkeletonDataset, list[str], list[str]]:
    """Open the dataset and read the benchmark's split names (clear errors for either missing)."""
    ds = open_dataset(cfg.data.path)
    check_stream(cfg.data.stream)
    test_names = ds.split(cfg.data.benchmark, "test")
    train_names = ds.split(cfg.data.benchmark, "train") if with_train else []
    if with_train and not train_names:
        raise MMCLError(f"{ds.path}: benchmark {cfg.data.benchmark!r} has an empty train split")
    if not test_names:
        raise MMCLError(f"{ds.path}: benchmark {cfg.data.benchmark!r} has an empty test split")
    return ds, train_names, test_names


def cofeatures(cfg: Config, train_names: list[str]) -> dict[str, np.ndarray]:
    """The cached co-learning features of the training samples, joined by name.

    A sample without features is an error naming it (``FeatureFile.take``).
    """
    out: dict[str, np.ndarray] = {}
    if cfg.model.frm:
        if not cfg.features.text:
            raise MMCLError("model.frm is on but features.text is null: point it at a text feature file "
                            "(`mmcl extract-text`), or set model.frm=false")
        out["text"] = load_features(cfg.features.text).take(train_names, what="training samples")
    if cfg.model.fam and not cfg.features.rgb_end_to_end:
        if not cfg.features.rgb:
            raise MMCLError("model.fam is on but features.rgb is null: point it at a cached RGB feature "
                            "file, set features.rgb_end_to_end=true, or set model.fam=false")
        out["rgb"] = load_features(cfg.features.rgb).take(train_names, what="training samples")
    return out


def rgb_strips(cfg: Config, ds: SkeletonDataset, train_names: list[str]) -> Any:
    """With FAM trained end to end: the loader of the training samples' RGB strips, after
    checking that every one exists (``None`` otherwise)."""
    if not (cfg.model.fam and cfg.features.rgb_end_to_end):
        return None
    if not cfg.features.image_encoder:
        raise MMCLError("features.rgb_end_to_end is on but features.image_encoder is null: point it at a "
                        "local Transformers image model folder (e.g. ViT, CLIP, ResNet)")
    from mmcl.data.strips import StripLoader

    strips = StripLoader.for_dataset(ds.path, cfg.features.image_encoder,
                                     trust_remote_code=cfg.features.trust_remote_code)
    strips.check(train_names)
    return strips


def build_data(cfg: Config) -> DataBundle:
    """Datasets for training and test, and the device-side augmentation."""
    ds, train_names, test_names = open_data(cfg)
    features = cofeatures(cfg, train_names)
    common: dict[str, Any] = dict(
        recipe=cfg.data.recipe, window=cfg.data.window, num_person=cfg.data.num_person,
        pad_second_actor=cfg.data.pad_second_actor, crop_range=cfg.data.crop_range,
        test_crop=cfg.data.test_crop, seed=cfg.seed,
    )
    augment = BatchAugment(cfg.data.recipe, cfg.data.stream, ds.layout, rotate=cfg.data.rotate)
    train = SkeletonClips(ds, train_names, train=True, repeat=cfg.data.repeat, features=features,
                          strips=rgb_strips(cfg, ds, train_names), **common)
    test = SkeletonClips(ds, test_names, train=False, **common)
    return DataBundle(ds, train, test, augment, {k: int(v.shape[1]) for k, v in features.items()})


def eval_clips(ds: SkeletonDataset, names: list[str], spec: dict[str, Any]) -> SkeletonClips:
    """Test clips cut as the model's training run cut them (``spec`` from the model metadata)."""
    return SkeletonClips(
        ds, names, train=False, recipe=spec["recipe"], window=int(spec["window"]),
        num_person=int(spec["num_person"]), pad_second_actor=bool(spec.get("pad_second_actor", False)),
        test_crop=float(spec.get("test_crop", 0.95)),
    )


def model_spec(cfg: Config, ds: SkeletonDataset) -> dict[str, Any]:
    """What rebuilding the skeleton model and its inputs needs (stored with the weights)."""
    return {
        "architecture": "ctrgcn",
        "num_class": ds.num_classes,
        "in_channels": ds.channels,
        "num_person": cfg.data.num_person,
        "window": cfg.data.window,
        "layout": ds.layout.to_json(),
        "stream": cfg.data.stream,
        "recipe": cfg.data.recipe,
        "pad_second_actor": cfg.data.pad_second_actor,
        "test_crop": cfg.data.test_crop,
        "dataset": ds.name,
        "class_names": ds.class_names,
    }


def check_spec(saved: dict[str, Any], expected: dict[str, Any], *, where: str) -> None:
    """Raise a clear error when weights were trained for another class count, layout or input."""
    keys = ("num_class", "in_channels", "num_person", "stream")
    diffs = [f"{k}: {saved.get(k)!r} there, {expected.get(k)!r} here" for k in keys if saved.get(k) != expected.get(k)]
    saved_layout, layout = saved.get("layout") or {}, expected.get("layout") or {}
    if saved_layout.get("joints") != layout.get("joints") or saved_layout.get("bones") != layout.get("bones"):
        diffs.append(f"layout: {saved_layout.get('name')!r} with {len(saved_layout.get('joints', []))} joints "
                     f"there, {layout.get('name')!r} with {len(layout.get('joints', []))} joints here")
    if diffs:
        raise MMCLError(f"{where} does not match: " + "; ".join(diffs))


def build_skeleton_model(spec: dict[str, Any], dropout: float = 0.0) -> torch.nn.Module:
    """A bare CTR-GCN for ``spec`` (no co-learning heads)."""
    from mmcl.models.ctrgcn import CTRGCN

    layout = Layout.from_json(spec["layout"])
    return CTRGCN(int(spec["num_class"]), adjacency=layout.adjacency(), num_person=int(spec["num_person"]),
                  in_channels=int(spec["in_channels"]), dropout=dropout)


def build_model(cfg: Config, spec: dict[str, Any], feature_dims: dict[str, int]) -> torch.nn.Module:
    """CTR-GCN wrapped with the co-learning heads the config switches on."""
    from mmcl.models.mmcl_model import MMCLModel

    backbone = build_skeleton_model(spec, cfg.model.dropout)
    backbone.skip_empty_persons = cfg.train.skip_empty_persons
    rgb_encoder = None
    if cfg.model.fam and cfg.features.rgb_end_to_end:  # the encoder trains with the same optimizer
        from mmcl.models.vision import load_image_encoder

        rgb_encoder = load_image_encoder(cfg.features.image_encoder, trust_remote_code=cfg.features.trust_remote_code)
    return MMCLModel(
        backbone,
        rgb_dim=feature_dims.get("rgb") if cfg.model.fam else None,
        text_dim=feature_dims.get("text") if cfg.model.frm else None,
        rgb_encoder=rgb_encoder,
        temperature=cfg.loss.temperature,
    )


def loss_weights(cfg: Config) -> Any:
    from mmcl.models.mmcl_model import LossWeights

    return LossWeights(ce=cfg.loss.ce, refine=cfg.loss.refine, contrast=cfg.loss.contrast)


# -- optimisation ------------------------------------------------------------------------


def global_batch(cfg: Config, num_processes: int) -> int:
    """Samples per optimizer update across all processes."""
    return cfg.train.batch_size * num_processes * cfg.train.grad_accum


def scaled_lr(cfg: Config, num_processes: int) -> float:
    """``optim.lr`` scaled linearly from ``optim.reference_batch`` to the real global batch."""
    return cfg.optim.lr * global_batch(cfg, num_processes) / cfg.optim.reference_batch


# Fewest samples per process for which BatchNorm statistics held up in our runs: the demo recipe
# reached 97.08 / 100 % top-1 with 8 samples in one process and 88.33 / 86.67 % with 2 processes
# of 4 (seeds 1 / 2; same global batch, lr and updates; README, "One DDP process per core").
BATCHNORM_MIN_PER_PROCESS = 8


def batchnorm_note(cfg: Config, num_processes: int) -> str | None:
    """A warning when several processes each normalise BatchNorm over too few samples, else None.

    DDP keeps BatchNorm per process (as upstream's per-GPU DataParallel did), so its statistics
    come from ``train.batch_size`` samples, whatever the global batch; gradient accumulation
    does not enlarge them. ``train.sync_batchnorm`` gathers them over all processes instead.
    """
    per_process = cfg.train.batch_size
    if num_processes < 2 or per_process >= BATCHNORM_MIN_PER_PROCESS or cfg.train.sync_batchnorm:
        return None
    return (
        f"warning: each of the {num_processes} processes normalises BatchNorm over its own "
        f"{per_process} samples (train.batch_size); below {BATCHNORM_MIN_PER_PROCESS} this cost "
        f"accuracy in our runs. Use fewer processes, a larger train.batch_size, or "
        f"train.sync_batchnorm=true."
    )


def cpu_precision_note(device: torch.device, mixed_precision: str, bf16_native: bool) -> str | None:
    """A hint when the precision does not suit this CPU, else None: bf16 autocast without native
    bf16 (AVX512-BF16 or AMX) is many times slower than float32; with it, bf16 trains faster."""
    from mmcl.models.inference import slow_bf16_note

    if device.type != "cpu":
        return None
    if slow := slow_bf16_note(device, torch.bfloat16 if mixed_precision == "bf16" else None, bf16_native):
        return f"{slow}; drop --mixed_precision bf16 / train.mixed_precision."
    if mixed_precision == "no" and bf16_native:
        return ("note: this CPU has native bf16; train.mixed_precision=bf16 (or accelerate launch "
                "--mixed_precision bf16) trained 1.6x (whole epochs) to 2.3x (the step) faster on one "
                "(benchmarks/trainer_ab.py, cpu_bf16.py; see the README for its accuracy).")
    return None


def sync_batchnorm(cfg: Config, model: torch.nn.Module, device: torch.device, num_processes: int) -> torch.nn.Module:
    """``train.sync_batchnorm`` with several processes: on CPU, the backbone gathers its BatchNorm
    statistics itself (``CTRGCN.sync_batchnorm``); on GPUs, PyTorch's ``nn.SyncBatchNorm`` takes
    the place of every BatchNorm."""
    if not cfg.train.sync_batchnorm or num_processes < 2:
        return model
    if device.type == "cpu":
        model.backbone.sync_batchnorm = True
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def lr_factor(cfg: Config) -> Callable[[int], float]:
    """CTR-GCN's per-epoch rule (0-based epoch e): ``(e + 1) / warmup`` during warm-up, then
    ``lr_decay ** (number of lr_steps <= e)``."""
    warmup, steps, decay = cfg.schedule.warmup_epochs, list(cfg.schedule.lr_steps), cfg.schedule.lr_decay

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        return decay ** sum(epoch >= s for s in steps)

    return factor


def make_optimizer(cfg: Config, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.optim.momentum,
                           nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)


class EpochSampler(Sampler[int]):
    """A shuffle that is a pure function of (seed, epoch), like DistributedSampler's.

    Every process draws the same permutation (Accelerate then deals the batches out), and a
    resumed run draws the same order as an uninterrupted one. ``num_samples`` caps an epoch
    (smoke runs with ``train.max_steps_per_epoch``).
    """

    def __init__(self, size: int, seed: int, num_samples: int | None = None) -> None:
        self.size, self.seed = size, seed
        self.num_samples = size if num_samples is None else min(num_samples, size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g)[: self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples
