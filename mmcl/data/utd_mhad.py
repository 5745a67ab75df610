"""UTD-MHAD skeletons (Kinect v1): MATLAB 5 files ``a{action}_s{subject}_t{trial}_skeleton.mat``.

Each file holds ``d_skel``, float64 of shape (20 joints, 3, T frames), in the dataset's own joint
order (``Skeleton_joint_order.txt``, see :data:`mmcl.graphs.UTD_MHAD`). A sample is stored as
float32 (T, 1, 20, 3) in the recording's native camera-space metres, not centred: like NW-UCLA,
any centring or scaling is the engine's load-time transform, so the stored dataset stays the
recording itself. 27 actions, 8 subjects, 4 trials; 861 files (a8_s1_t4, a23_s6_t4 and a27_s8_t4
were never recorded).

Benchmark ``xsub``: odd subjects 1, 3, 5, 7 train (431 samples), even subjects 2, 4, 6, 8 test (430).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mmcl.data.sources import SampleError
from mmcl.data.store import Sample
from mmcl.errors import MMCLError
from mmcl.graphs import UTD_MHAD, Layout

CLASS_NAMES: tuple[str, ...] = (
    "right arm swipe to the left",
    "right arm swipe to the right",
    "right hand wave",
    "two hand front clap",
    "right arm throw",
    "cross arms in the chest",
    "basketball shoot",
    "right hand draw x",
    "right hand draw circle (clockwise)",
    "right hand draw circle (counter clockwise)",
    "draw triangle",
    "bowling (right hand)",
    "front boxing",
    "baseball swing from right",
    "tennis right hand forehand swing",
    "arm curl (two arms)",
    "tennis serve",
    "two hand push",
    "right hand knock on door",
    "right hand catch an object",
    "right hand pick up and throw",
    "jogging in place",
    "walking in place",
    "sit to stand",
    "stand to sit",
    "forward lunge (left foot forward)",
    "squat (two arms stretch out)",
)

_NAME = re.compile(r"a(\d+)_s(\d+)_t(\d+)")
_FILE = re.compile(r"(a\d+_s\d+_t\d+)(?:_skeleton)?\.mat")
META_FIELDS: tuple[str, ...] = ("action", "subject", "trial")
NUM_JOINTS = 20

def parse_utd_name(name: str) -> dict[str, int]:
    """The numbered fields of a UTD-MHAD sample name ``a{action}_s{subject}_t{trial}``."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise MMCLError(f"{name!r} is not a UTD-MHAD sample name: expected a{{action}}_s{{subject}}_t{{trial}} (e.g. a1_s1_t1)")
    return dict(zip(META_FIELDS, (int(g) for g in match.groups())))


@dataclass(frozen=True)
class UtdMhadSource:
    """Reads the UTD-MHAD skeleton ``.mat`` files (see the module docstring)."""

    name: str = "utd-mhad"
    layout: Layout = UTD_MHAD
    num_person: int = 1
    channels: int = 3
    has_colors: bool = False
    class_names: tuple[str, ...] = CLASS_NAMES
    meta_fields: tuple[str, ...] = META_FIELDS

    def discover(self, raw: Path) -> list[Path]:
        """The skeleton ``.mat`` files of ``raw`` (or of its ``Skeleton/`` subfolder, as unpacked
        from the UTD-MHAD download)."""
        raw = Path(raw)
        if not raw.is_dir():
            raise MMCLError(f"UTD-MHAD folder {raw} does not exist (expected a*_s*_t*_skeleton.mat files)")
        folder = raw
        if not _mat_files(raw) and (raw / "Skeleton").is_dir():
            folder = raw / "Skeleton"
        files = _mat_files(folder)
        if not any(_FILE.fullmatch(p.name) for p in files):
            raise MMCLError(
                f"{folder} holds no UTD-MHAD skeleton files: expected MATLAB files named "
                "a{action}_s{subject}_t{trial}_skeleton.mat"
            )
        return files

    def sample_name(self, path: Path) -> str:
        match = _FILE.fullmatch(Path(path).name)
        return match.group(1) if match else Path(path).stem

    def skip_reason(self, name: str) -> str | None:
        return None

    def read(self, path: Path) -> Sample:
        """Load ``d_skel`` (20, 3, T) into a (T, 1, 20, 3) float32 sample; SampleError on bad input."""
        from scipy.io import loadmat  # scipy is imported only when UTD-MHAD is prepared

        path = Path(path)
        name = self.sample_name(path)
        try:
            fields = parse_utd_name(name)
        except MMCLError as exc:
            raise SampleError(f"{path.name}: {exc}") from None
        if not 1 <= fields["action"] <= len(CLASS_NAMES):
            raise SampleError(f"{path.name}: action a{fields['action']} outside 1..{len(CLASS_NAMES)}")
        try:
            mat = loadmat(path, variable_names=["d_skel"])
        except Exception as exc:  # scipy raises ValueError, TypeError, OSError... for bad files
            raise SampleError(f"{path.name}: not a readable MATLAB 5 file ({type(exc).__name__}: {exc})") from None
        if "d_skel" not in mat:
            raise SampleError(f"{path.name}: no variable 'd_skel' (expected the skeleton array, 20 x 3 x T)")
        skel = np.asarray(mat["d_skel"])
        if skel.ndim != 3 or skel.shape[:2] != (NUM_JOINTS, 3) or not np.issubdtype(skel.dtype, np.number):
            raise SampleError(f"{path.name}: d_skel has shape {skel.shape} ({skel.dtype}), expected (20, 3, T) numbers")
        if skel.shape[2] == 0:
            raise SampleError(f"{path.name}: d_skel has 0 frames")
        if not np.isfinite(skel).all():
            t = int(np.argwhere(~np.isfinite(skel))[0, 2])
            raise SampleError(f"{path.name}: frame {t} holds a non-finite coordinate")
        joints = np.ascontiguousarray(skel.transpose(2, 0, 1), dtype=np.float32)[:, None]
        return Sample(name=name, label=fields["action"] - 1, joints=joints, colors=None, bodies=1, meta=fields)

    def splits(self, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """Benchmark ``xsub`` from :mod:`mmcl.data.splits` (which imports this module's name parser)."""
        from mmcl.data.splits import all_splits

        return all_splits(self.name, names)


def _mat_files(folder: Path) -> list[Path]:
    """The ``.mat`` files of a folder in natural order (a1, a2, ..., a27; then subject, trial)."""

    def key(p: Path) -> tuple:
        match = _FILE.fullmatch(p.name)
        numbers = tuple(int(g) for g in _NAME.fullmatch(match.group(1)).groups()) if match else ()
        return (0, numbers, p.name) if match else (1, (), p.name)

    return sorted((p for p in folder.iterdir() if p.suffix == ".mat" and p.is_file()), key=key)
