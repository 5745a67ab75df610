"""NW-UCLA (Northwestern-UCLA Multiview Action3D) in the form CTR-GCN distributes it.

The raw set is a folder ``all_sqe/`` of 1,484 JSON files named ``aAA_sSS_eEE_vVV.json`` (action,
subject, environment, view), each ``{"file_name": str, "skeletons": [T][20][3], "label": 1..10}``:
one actor, 20 Kinect v1 joints in SDK order, no colour-image coordinates.

Coordinates are stored exactly as they are in the files (float32, camera space). CTR-GCN's UCLA
normalisation -- centring on joint index 1 of frame 0, the random view transform and the per-sample
min-max scaling to [-1, 1] -- happens when the engine loads a sample, not here, so the stored
dataset is the raw recording and the augmentation can be changed without re-preparing.

Benchmark ``xview`` (CTR-GCN's protocol, rule in :mod:`mmcl.data.splits`): views 1 and 2 train
(1,020 samples on the real set), view 3 tests (464). The split lists view 1, then view 2, each in
file order; CTR-GCN's feeder hard-codes its own (shuffled) sample order, so join its score files
by name, as ``mmcl ensemble`` does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mmcl.data.sources import SampleError
from mmcl.data.store import Sample
from mmcl.errors import MMCLError
from mmcl.graphs import UCLA, Layout

CLASS_NAMES: tuple[str, ...] = (
    "pick up with one hand",
    "pick up with two hands",
    "drop trash",
    "walk around",
    "sit down",
    "stand up",
    "donning",
    "doffing",
    "throw",
    "carry",
)

# NW-UCLA numbers its ten actions 1-6, 8, 9, 11, 12 in file names; the JSON label is 1..10.
ACTION_TO_LABEL: dict[int, int] = {a: i + 1 for i, a in enumerate((1, 2, 3, 4, 5, 6, 8, 9, 11, 12))}

_NAME = re.compile(r"a(\d{2})_s(\d{2})_e(\d{2})_v(\d{2})")
META_FIELDS: tuple[str, ...] = ("action", "subject", "environment", "view")
NUM_JOINTS = 20

def parse_ucla_name(name: str) -> dict[str, int]:
    """The numbered fields of an NW-UCLA sample name ``aAA_sSS_eEE_vVV`` (``.json`` allowed)."""
    stem = name[:-5] if name.endswith(".json") else name
    match = _NAME.fullmatch(stem)
    if match is None:
        raise MMCLError(
            f"{name!r} is not an NW-UCLA sample name: expected aAA_sSS_eEE_vVV "
            "(action, subject, environment, view; e.g. a01_s01_e00_v01)"
        )
    return dict(zip(META_FIELDS, (int(g) for g in match.groups())))


@dataclass(frozen=True)
class UclaSource:
    """Reads CTR-GCN's NW-UCLA ``all_sqe/`` JSON files (see the module docstring)."""

    name: str = "ucla"
    layout: Layout = UCLA
    num_person: int = 1
    channels: int = 3
    has_colors: bool = False
    class_names: tuple[str, ...] = CLASS_NAMES
    meta_fields: tuple[str, ...] = META_FIELDS

    def discover(self, raw: Path) -> list[Path]:
        """The ``.json`` files of ``raw``, which is ``all_sqe/`` itself or the folder holding it."""
        raw = Path(raw)
        if not raw.is_dir():
            raise MMCLError(f"NW-UCLA folder {raw} does not exist (expected all_sqe/ of aAA_sSS_eEE_vVV.json files)")
        folder = raw / "all_sqe" if (raw / "all_sqe").is_dir() else raw
        files = sorted(p for p in folder.iterdir() if p.suffix == ".json" and p.is_file())
        if not any(_NAME.fullmatch(p.stem) for p in files):
            raise MMCLError(
                f"{folder} holds no NW-UCLA files: expected CTR-GCN's all_sqe/ folder of "
                "aAA_sSS_eEE_vVV.json files (pass --raw all_sqe/ or the folder containing it)"
            )
        return files

    def sample_name(self, path: Path) -> str:
        return Path(path).stem

    def skip_reason(self, name: str) -> str | None:
        return None

    def read(self, path: Path) -> Sample:
        """Parse one JSON file into a (T, 1, 20, 3) float32 sample; SampleError on bad input."""
        path = Path(path)
        try:
            fields = parse_ucla_name(path.stem)
        except MMCLError as exc:
            raise SampleError(f"{path.name}: {exc}") from None
        if fields["action"] not in ACTION_TO_LABEL:
            raise SampleError(
                f"{path.name}: action a{fields['action']:02d} is not an NW-UCLA action "
                f"(expected one of {sorted(ACTION_TO_LABEL)})"
            )
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError(f"{path.name}: malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SampleError(f"{path.name}: expected a JSON object with file_name, skeletons, label")
        for key in ("skeletons", "label"):
            if key not in data:
                raise SampleError(f"{path.name}: missing key {key!r} (expected file_name, skeletons, label)")
        file_name = data.get("file_name")
        if file_name is not None and Path(str(file_name)).stem != path.stem:
            raise SampleError(f"{path.name}: its file_name says {file_name!r}, not {path.stem!r}")
        label = data["label"]
        expected = ACTION_TO_LABEL[fields["action"]]
        if isinstance(label, bool) or not isinstance(label, int) or label != expected:
            raise SampleError(
                f"{path.name}: label {label!r} does not match the file name: action "
                f"a{fields['action']:02d} is label {expected} ({CLASS_NAMES[expected - 1]})"
            )
        joints = _skeleton_array(path.name, data["skeletons"])
        return Sample(
            name=path.stem,
            label=expected - 1,
            joints=joints[:, None],
            colors=None,
            bodies=1,
            meta=fields,
        )

    def splits(self, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """Benchmark ``xview`` from :mod:`mmcl.data.splits` (which imports this module's name parser)."""
        from mmcl.data.splits import all_splits

        return all_splits(self.name, names)


def _skeleton_array(file: str, skeletons: object) -> np.ndarray:
    """``skeletons`` as float32 (T, 20, 3), with the first bad frame named on error."""
    if not isinstance(skeletons, list):
        raise SampleError(f"{file}: 'skeletons' must be a list of frames, got {type(skeletons).__name__}")
    if not skeletons:
        raise SampleError(f"{file}: 'skeletons' has 0 frames (expected T >= 1 frames of 20 joints x 3)")
    for t, frame in enumerate(skeletons):
        if not isinstance(frame, list) or len(frame) != NUM_JOINTS:
            count = len(frame) if isinstance(frame, list) else type(frame).__name__
            raise SampleError(f"{file}: frame {t} has {count} joints, expected {NUM_JOINTS}")
        for j, joint in enumerate(frame):
            if not isinstance(joint, list) or len(joint) != 3:
                raise SampleError(f"{file}: frame {t} joint {j} is {joint!r}, expected [x, y, z]")
    try:
        arr = np.array(skeletons, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SampleError(f"{file}: skeleton coordinates are not numbers ({exc})") from None
    if not np.isfinite(arr).all():
        t = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise SampleError(f"{file}: frame {t} holds a non-finite coordinate")
    return arr.astype(np.float32)
