"""Training and test clips: the per-sample steps of the published input recipes.

:class:`SkeletonClips` reads one sample's valid frames from a prepared dataset and returns
a fixed-size clip (C, T=window, V, M). The steps are cheap and run in DataLoader workers:

- ``recipe="ntu"`` (CTR-GCN's ``feeder_ntu`` + ``tools.valid_crop_resize``): training
  crops a random ratio p in ``crop_range`` of the valid frames (at least ``min_crop``
  frames, at most all of them) at a random offset; test takes the centre ``test_crop``
  ratio. Both are resized to ``window`` frames by linear interpolation
  (``align_corners=False``, the same numbers as upstream's bilinear call). The random
  rotation and the stream follow on the device (:class:`mmcl.data.augment.BatchAugment`).
- ``recipe="ucla"`` (CTR-GCN's ``feeder_ucla``): centre on joint 1 of frame 0; training
  rotates about x and y by angles uniform in ``±ucla_rotate_deg`` and scales by a factor
  uniform in ``ucla_scale``; then every coordinate axis is min-max normalised to [-1, 1]
  over the whole clip; then ``window`` (52) frames are taken: sampled with replacement
  and sorted for training, evenly spaced for test. Upstream normalises before it samples
  frames, so this stays per sample (the batch would only see the sampled frames).

Persons: the stored clip has the dataset's body slots; ``num_person`` keeps the first
ones (or pads with zeros). ``pad_second_actor`` copies actor 1 into an all-zero second
slot, as CTR-GCN's NTU120 data does; without it the slot stays zero (its NTU60 data).

Randomness comes from a generator seeded by ``(seed, epoch, index)``: the same seed gives
the same clips whatever the number of workers or processes, and a resumed run gets the
same clips as long as the caller calls :meth:`SkeletonClips.set_epoch` before each epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmcl.data.augment import BatchAugment, check_recipe
from mmcl.data.store import SkeletonDataset
from mmcl.errors import MMCLError

_RESERVED = ("x", "label", "index")


def crop_bounds(
    frames: int, *, train: bool, rng: np.random.Generator | None = None,
    crop_range: tuple[float, float] = (0.5, 1.0), test_crop: float = 0.95, min_crop: int = 64,
) -> tuple[int, int]:
    """(start, length) of CTR-GCN's ``valid_crop_resize`` crop of ``frames`` valid frames.

    Training: p uniform in ``crop_range``, length ``min(max(floor(frames * p), min_crop), frames)``,
    start uniform in ``0 .. frames - length``. Test: ``bias = int((1 - test_crop) * frames / 2)``,
    frames ``bias .. frames - bias``.
    """
    if train:
        if rng is None:
            raise ValueError("a training crop needs a random generator")
        lo, hi = crop_range
        p = rng.random() * (hi - lo) + lo
        length = min(max(int(math.floor(frames * p)), min_crop), frames)
        start = int(rng.integers(0, frames - length + 1))
        return start, length
    bias = int((1 - test_crop) * frames / 2)
    return bias, frames - 2 * bias


def resize_time(x: torch.Tensor, window: int) -> torch.Tensor:
    """Resize (C, T, V, M) to (C, window, V, M) by linear interpolation over time
    (``align_corners=False``), as CTR-GCN's bilinear call does."""
    c, t, v, m = x.shape
    flat = x.permute(0, 2, 3, 1).reshape(1, c * v * m, t)
    out = F.interpolate(flat, size=window, mode="linear", align_corners=False)
    return out.reshape(c, v, m, window).permute(0, 3, 1, 2).contiguous()


def ucla_view_matrix(agx: float, agy: float, scale: float) -> np.ndarray:
    """CTR-GCN's ``rand_view_transform`` matrix ``Ry @ Rx @ S`` (angles in radians), applied
    to row vectors: ``p' = p @ M``."""
    cx, sx, cy, sy = math.cos(agx), math.sin(agx), math.cos(agy), math.sin(agy)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    return ry @ rx * scale


def minmax_normalise(clip: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Scale each coordinate axis of (T, M, V, C) to [-1, 1] over the present body slots;
    absent slots stay zero. An axis with no extent maps to 0."""
    out = np.zeros_like(clip)
    if not present.any():
        return out
    body = clip[:, present]
    lo = body.min(axis=(0, 1, 2))
    span = body.max(axis=(0, 1, 2)) - lo
    safe = np.where(span > 0, span, 1.0)
    out[:, present] = np.where(span > 0, (body - lo) / safe * 2 - 1, 0.0)
    return out


def ucla_frame_indices(frames: int, window: int, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Training: ``window`` frames drawn with replacement, sorted. Test: evenly spaced
    (``linspace(0, frames - 1, window)`` truncated to integers, as upstream)."""
    if train:
        if rng is None:
            raise ValueError("training frame sampling needs a random generator")
        return np.sort(rng.integers(0, frames, size=window))
    return np.linspace(0, frames - 1, window).astype(np.int64)


class SkeletonClips(Dataset):
    """Fixed-size clips of one split, per a published input recipe (see the module docstring).

    Items are dicts: ``x`` float32 (C, window, V, num_person), ``label`` and ``index``
    (position in ``names``) int64, plus one float32 tensor per entry of ``features``
    (arrays aligned with ``names``, e.g. ``{"text": ..., "rgb": ...}``). With ``strips`` (a
    callable name -> image tensor, e.g. :class:`mmcl.data.strips.StripLoader`), ``rgb`` is
    instead the sample's RGB strip, preprocessed for an encoder trained end to end.

    With ``augment``, the device-side augmentation (rotation, stream) also runs here, per
    sample; without it the caller applies ``augment(batch["x"], train)`` on the device.
    """

    def __init__(
        self,
        ds: SkeletonDataset,
        names: Sequence[str],
        *,
        recipe: str,
        train: bool,
        window: int,
        num_person: int,
        pad_second_actor: bool = False,
        crop_range: tuple[float, float] = (0.5, 1.0),
        test_crop: float = 0.95,
        repeat: int = 1,
        features: Mapping[str, np.ndarray] | None = None,
        min_crop: int = 64,
        ucla_rotate_deg: float = 60.0,
        ucla_scale: tuple[float, float] = (0.5, 1.5),
        augment: BatchAugment | None = None,
        seed: int | None = None,
        strips: Callable[[str], torch.Tensor] | None = None,
    ) -> None:
        self.ds = ds
        self.names = list(names)
        self.recipe = check_recipe(recipe)
        self.train = bool(train)
        self.window = int(window)
        self.num_person = int(num_person)
        self.pad_second_actor = bool(pad_second_actor)
        self.crop_range = (float(crop_range[0]), float(crop_range[1]))
        self.test_crop = float(test_crop)
        self.repeat = int(repeat)
        self.min_crop = int(min_crop)
        self.ucla_rotate_deg = float(ucla_rotate_deg)
        self.ucla_scale = (float(ucla_scale[0]), float(ucla_scale[1]))
        self.augment = augment
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self.epoch = 0
        self._check_options()
        self._infos = [ds.info_of(n) for n in self.names]  # clear error for an unknown name
        self.labels = np.array([i.label for i in self._infos], dtype=np.int64)
        self.features = {k: self._check_features(k, v) for k, v in (features or {}).items()}
        if strips is not None and "rgb" in self.features:
            raise MMCLError("give either cached rgb features or RGB strips, not both")
        self.strips = strips

    def _check_options(self) -> None:
        if not self.names:
            raise MMCLError(f"{self.ds.path}: no samples to load (empty split)")
        if self.window < 1:
            raise MMCLError(f"window must be at least 1 frame, got {self.window}")
        if self.num_person < 1:
            raise MMCLError(f"num_person must be at least 1, got {self.num_person}")
        if self.repeat < 1:
            raise MMCLError(f"repeat must be at least 1, got {self.repeat}")
        lo, hi = self.crop_range
        if not 0 < lo <= hi <= 1:
            raise MMCLError(f"crop_range must satisfy 0 < low <= high <= 1, got {self.crop_range}")
        if not 0 < self.test_crop <= 1:
            raise MMCLError(f"test_crop must be in (0, 1], got {self.test_crop}")
        if self.ds.channels != 3 and (self.recipe == "ucla" or (self.augment and self.augment.rotates)):
            raise MMCLError(f"{self.ds.path}: the {self.recipe} recipe rotates 3-D points, "
                            f"but the dataset has {self.ds.channels} channels")

    def _check_features(self, key: str, values: np.ndarray) -> np.ndarray:
        if key in _RESERVED:
            raise MMCLError(f"feature name {key!r} clashes with a clip field; use another name")
        values = np.asarray(values)
        if values.ndim < 1 or values.shape[0] != len(self.names):
            raise MMCLError(
                f"features {key!r} have {values.shape[0] if values.ndim else 0} rows for "
                f"{len(self.names)} samples; expected one row per name, in the same order"
            )
        return values

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random crops and angles the next items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names) * self.repeat

    def rng(self, index: int) -> np.random.Generator:
        """The generator for item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"clip index {index} out of range 0..{len(self) - 1}")
        pos = index % len(self.names)
        name = self.names[pos]
        rng = self.rng(index) if self.train else None
        clip = self.persons(self.ds.joints(name))
        if clip.shape[0] == 0:
            raise MMCLError(f"{self.ds.path}: sample {name} has no frames")
        x = self.ntu_clip(clip, rng) if self.recipe == "ntu" else self.ucla_clip(clip, rng)
        if self.augment is not None:
            gen = None
            if self.train:
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            x = self.augment.per_sample(x, self.train, gen)
        item: dict[str, Any] = {
            "x": x,
            "label": torch.tensor(self.labels[pos], dtype=torch.int64),
            "index": torch.tensor(pos, dtype=torch.int64),
        }
        for key, values in self.features.items():
            item[key] = torch.from_numpy(np.asarray(values[pos], dtype=np.float32))
        if self.strips is not None:
            item["rgb"] = self.strips(name)
        return item

    # -- per-sample steps ----------------------------------------------------------------
    def persons(self, clip: np.ndarray) -> np.ndarray:
        """(T, M, V, C) with the stored body slots -> (T, num_person, V, C)."""
        t, m, v, c = clip.shape
        if self.pad_second_actor and m >= 2 and not clip[:, 1].any():
            clip = clip.copy()
            clip[:, 1] = clip[:, 0]
        if m >= self.num_person:
            return clip[:, : self.num_person]
        out = np.zeros((t, self.num_person, v, c), dtype=clip.dtype)
        out[:, :m] = clip
        return out

    def ntu_clip(self, clip: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        """Crop the valid frames (random for training, centre for test) and resize to ``window``."""
        start, length = crop_bounds(
            clip.shape[0], train=self.train, rng=rng, crop_range=self.crop_range,
            test_crop=self.test_crop, min_crop=self.min_crop,
        )
        x = torch.from_numpy(np.ascontiguousarray(clip[start : start + length])).permute(3, 0, 2, 1)
        return resize_time(x.float(), self.window)

    def ucla_clip(self, clip: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        """Centre, view-transform (training), min-max normalise, then pick ``window`` frames."""
        present = clip.any(axis=(0, 2, 3))
        x = clip.astype(np.float64) - clip[0, 0, 1].astype(np.float64)
        if self.train:
            deg = self.ucla_rotate_deg
            agx, agy = np.radians(rng.uniform(-deg, deg, size=2))
            scale = rng.uniform(*self.ucla_scale)
            x = x @ ucla_view_matrix(agx, agy, scale)
        x = minmax_normalise(x, present)
        idx = ucla_frame_indices(clip.shape[0], self.window, train=self.train, rng=rng)
        x = np.ascontiguousarray(x[idx].transpose(3, 0, 2, 1), dtype=np.float32)
        return torch.from_numpy(x)
