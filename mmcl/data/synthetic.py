"""The built-in synthetic dataset: procedurally generated NTU-layout recordings.

Fifteen clearly different actions (eleven for one actor, four for two) are animated on a 25-joint
body (:mod:`mmcl.data.synthetic_motion`) with variation in body size (per performer), amplitude,
speed, repetitions, length (40-100 frames), viewpoint (camera and facing direction), camera height
and tilt, and sensor noise. Recordings are written as real Kinect v2 ``.skeleton`` text files --
camera-space joints plus their depth- and colour-image projections -- with the quirks of real
files (leading frames with no body, a late second body, a short-lived ghost body, CRLF line
endings), and then prepared by the NTU pipeline, the same code path as real data.

Names follow NTU: ``SsssCcccPpppRrrrAaaa``. Each class has ``samples_per_class`` samples,
cycling through 8 performers, 3 cameras and 2 replications; the setup (camera height and
distance) follows the performer. Benchmarks: ``xsub`` trains on performers 1-4 and tests on
5-8 (every performer has their own body size); ``xview`` tests camera 1 and trains on 2 and 3.

Everything is a pure function of the seed, the class and the sample index, so a seed always gives
the same files, whatever ``samples_per_class`` or the number of workers.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np

from mmcl.data import synthetic_motion as motion
from mmcl.data.naming import parse_ntu_name
from mmcl.data.ntu import NtuSource
from mmcl.errors import MMCLError

if TYPE_CHECKING:
    from mmcl.data.prepare import PrepareSummary

CLASS_NAMES: tuple[str, ...] = (
    "wave right hand",
    "wave left hand",
    "clap hands",
    "cheer up (raise both hands)",
    "punch with right fist",
    "kick with right foot",
    "squat down",
    "jump up",
    "bow",
    "sit down",
    "stand up",
    "shake hands",
    "push other person",
    "hug other person",
    "walk towards each other",
)


@dataclass(frozen=True)
class ActionSpec:
    fn: motion.ActionFn
    actors: int
    cycles: tuple[int, int]  # inclusive range of repetitions
    gap: tuple[float, float] = (0.0, 0.0)  # distance between the two actors' roots, metres
    walks: bool = False  # the actors walk ``Style.travel`` metres each, so start that much further apart


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(motion.wave("r"), 1, (2, 4)),
    ActionSpec(motion.wave("l"), 1, (2, 4)),
    ActionSpec(motion.clap, 1, (3, 6)),
    ActionSpec(motion.cheer, 1, (1, 3)),
    ActionSpec(motion.punch, 1, (2, 4)),
    ActionSpec(motion.kick, 1, (1, 2)),
    ActionSpec(motion.squat, 1, (1, 2)),
    ActionSpec(motion.jump, 1, (1, 3)),
    ActionSpec(motion.bow, 1, (1, 1)),
    ActionSpec(motion.sit(standing_up=False), 1, (1, 1)),
    ActionSpec(motion.sit(standing_up=True), 1, (1, 1)),
    ActionSpec(motion.handshake, 2, (2, 4), gap=(0.85, 1.0)),
    ActionSpec(motion.push, 2, (1, 1), gap=(0.75, 0.9)),
    ActionSpec(motion.hug, 2, (1, 2), gap=(0.5, 0.6)),
    ActionSpec(motion.walk_towards, 2, (1, 1), gap=(0.7, 0.9), walks=True),
)
assert len(ACTIONS) == len(CLASS_NAMES)

PERFORMERS = 8  # the splits (mmcl.data.splits) train on performers 1-4 and test on 5-8
CAMERA_YAW_DEG = {1: 0.0, 2: -45.0, 3: 45.0}  # where each camera looks from
DEFAULT_SAMPLES_PER_CLASS = 32
FRAMES = (40, 100)  # inclusive range of recording lengths

# Kinect v2 projections, fitted (least squares) to the real NTU files: pixel = a + b * x/z (+ c/z).
_DEPTH_X, _DEPTH_Y = (257.6, 365.0), (208.7, -368.0)
_COLOR_X, _COLOR_Y = (963.8, 1060.1, 40.9), (562.7, -1040.8)
COLOR_SIZE = (1920, 1080)
_COLOR_MARGIN = 30.0  # pixels kept free at the image border
_NOISY_JOINTS = [6, 7, 10, 11, 14, 15, 18, 19, 21, 22, 23, 24]  # hands and feet jitter more
_BODY_ID_BASE = 72057594037927936  # Kinect body IDs are large integers like this


# -- sample identity ------------------------------------------------------------------------


def sample_ids(index: int) -> dict[str, int]:
    """The setup, camera, performer and replication of a class's ``index``-th sample.

    Performers and cameras cycle together (8 and 3 are coprime), so any prefix of samples is
    balanced across both; the replication flips after 24 samples, the setup block after 48.
    """
    performer = index % PERFORMERS + 1
    camera = index % 3 + 1
    replication = (index // 24) % 2 + 1
    setup = 1 + (index // 48) * 4 + (performer - 1) // 2
    return {"setup": setup, "camera": camera, "subject": performer, "replication": replication}


def sample_name(action: int, index: int) -> str:
    """The NTU-style name of a class's ``index``-th sample (``action`` is 0-based)."""
    i = sample_ids(index)
    return f"S{i['setup']:03d}C{i['camera']:03d}P{i['subject']:03d}R{i['replication']:03d}A{action + 1:03d}"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def performer_body(seed: int, performer: int) -> motion.Body:
    """The body of a performer: the same in every sample, so cross-subject is a real test."""
    return motion.Body.random(_rng(seed, 1, performer))


def _setup_scene(seed: int, setup: int) -> tuple[float, float, float]:
    """(camera height, camera tilt in radians, typical actor distance) of a setup."""
    rng = _rng(seed, 2, setup)
    return rng.uniform(0.55, 1.0), rng.uniform(-0.12, 0.05), rng.uniform(2.7, 3.5)


# -- one recording --------------------------------------------------------------------------


@dataclass
class Track:
    """One Kinect body: camera-space joints for frames ``start .. start + len(xyz) - 1``."""

    body_id: int
    start: int
    xyz: np.ndarray  # float64 (n, 25, 3), metres, camera space
    tracking: np.ndarray  # int (n, 25): 2 tracked, 1 inferred
    heading: float  # facing direction about the vertical axis (radians), for the orientations


@dataclass
class Recording:
    name: str
    label: int
    frames: int
    tracks: list[Track]
    crlf: bool


def synthesize(seed: int, action: int, index: int) -> Recording:
    """Generate one recording: class ``action`` (0-based), sample ``index`` of that class."""
    if not 0 <= action < len(ACTIONS):
        raise MMCLError(f"synthetic action {action} outside 0..{len(ACTIONS) - 1}")
    spec = ACTIONS[action]
    ids = sample_ids(index)
    rng = _rng(seed, 3, action, index)
    height, tilt, depth = _setup_scene(seed, ids["setup"])

    frames = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    lead = int(rng.integers(1, 4)) if rng.random() < 0.15 else 0  # Kinect not yet tracking
    t = np.arange(frames - lead) / max(frames - lead - 1, 1)
    a, b = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
    w = np.clip((t - a) / (b - a), 0.0, 1.0) ** rng.uniform(0.8, 1.25)  # uneven speed
    style = motion.Style(
        amp=rng.uniform(0.8, 1.15),
        cycles=int(rng.integers(spec.cycles[0], spec.cycles[1] + 1)),
        phase=rng.uniform(0, 2 * np.pi),
        travel=rng.uniform(0.8, 1.3),
    )
    yaw = math.radians(CAMERA_YAW_DEG[ids["camera"]] + (-20 if ids["replication"] == 1 else 20) + rng.normal(0, 8))
    poses = spec.fn(w, style)
    bodies = [performer_body(seed, ids["subject"])]
    bodies += [motion.Body.random(rng) for _ in poses[1:]]
    local = [motion.forward_kinematics(p, body) for p, body in zip(poses, bodies)]

    # Place the actor(s) in the room: facing the camera (turned by yaw), or facing each other.
    centre = np.array([rng.uniform(-0.35, 0.35), -height, depth + rng.uniform(-0.3, 0.3)])
    if spec.actors == 1:
        headings, offsets = [math.pi + yaw], [np.zeros(3)]
    else:
        gap = rng.uniform(*spec.gap) + (2 * style.travel if spec.walks else 0.0)
        h = math.pi / 2 + yaw + (math.pi if rng.random() < 0.5 else 0.0)
        facing = np.array([math.sin(h), 0.0, math.cos(h)])
        headings, offsets = [h, h + math.pi], [-gap / 2 * facing, gap / 2 * facing]
    room = [_to_room(j, hd, centre + off) for j, hd, off in zip(local, headings, offsets)]
    room = _fit_in_view(room, tilt)
    cams = [_tilt(r, tilt) for r in room]

    sigma = rng.uniform(0.003, 0.01)
    tracks = []
    ids_used = rng.choice(200_000, size=len(cams) + 1, replace=False)
    for k, (xyz, hd) in enumerate(zip(cams, headings)):
        start = lead + (int(rng.integers(1, 4)) if k > 0 and rng.random() < 0.3 else 0)
        xyz = xyz[start - lead :]
        xyz, tracking = _add_noise(rng, xyz, sigma)
        tracks.append(Track(_BODY_ID_BASE + int(ids_used[k]), start, xyz, tracking, hd))
    if rng.random() < 0.06:  # a short-lived ghost body (furniture, a passer-by)
        tracks.append(_ghost(rng, frames, cams[0], _BODY_ID_BASE + int(ids_used[-1])))
    crlf = bool(rng.random() < 0.6)  # 7 of the 12 real files in ../shared/data have CRLF endings
    return Recording(sample_name(action, index), action, frames, tracks, crlf)


def _to_room(joints: np.ndarray, heading: float, origin: np.ndarray) -> np.ndarray:
    """Actor frame (x left, y up, z forward) -> room frame (camera axes, floor at origin y)."""
    c, s = math.cos(heading), math.sin(heading)
    rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return joints @ rot.T + origin


def _tilt(xyz: np.ndarray, tilt: float) -> np.ndarray:
    c, s = math.cos(tilt), math.sin(tilt)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return xyz @ rot.T


def _fit_in_view(room: list[np.ndarray], tilt: float) -> list[np.ndarray]:
    """Move the scene back from the camera until every joint projects inside the colour image."""
    shift = np.zeros(3)
    for _ in range(40):
        cols = [_color(_tilt(r + shift, tilt)) for r in room]
        lo = min(c.reshape(-1, 2).min(0).min() for c in cols)
        over_x = max(c[..., 0].max() for c in cols) - (COLOR_SIZE[0] - _COLOR_MARGIN)
        over_y = max(c[..., 1].max() for c in cols) - (COLOR_SIZE[1] - _COLOR_MARGIN)
        if lo >= _COLOR_MARGIN and over_x <= 0 and over_y <= 0:
            break
        shift[2] += 0.2
    return [r + shift for r in room]


def _add_noise(rng: np.random.Generator, xyz: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Sensor noise: white jitter plus a slow wobble, more at hands and feet; a few joints
    'inferred' (tracking state 1) with a larger error."""
    n = xyz.shape[0]
    scale = np.ones((1, 25, 1))
    scale[0, _NOISY_JOINTS] = 1.6
    white = rng.normal(0.0, sigma, xyz.shape) * scale
    slow = rng.normal(0.0, sigma, (n + 6, 25, 3)).cumsum(0)
    slow = (slow[6:] - slow[:-6]) / 6.0  # 6-frame moving sum of steps: a smooth drift
    tracking = np.full((n, 25), 2, dtype=np.int64)
    inferred = rng.random((n, 25)) < 0.01
    tracking[inferred] = 1
    extra = rng.normal(0.0, 0.03, xyz.shape) * inferred[..., None]
    return xyz + white + slow + extra, tracking


def _ghost(rng: np.random.Generator, frames: int, actor: np.ndarray, body_id: int) -> Track:
    """A body seen for 3-8 frames: a crumpled copy of the actor shifted sideways and back."""
    n = int(rng.integers(3, 9))
    start = int(rng.integers(0, max(frames - n, 1)))
    n = min(n, frames - start)
    base = actor[min(start, len(actor) - 1)]
    offset = np.array([rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.3), rng.uniform(-0.3, 0.1), rng.uniform(0.3, 1.2)])
    xyz = base[None] + offset + rng.normal(0.0, 0.08, (n, 25, 3))
    return Track(body_id, start, xyz, np.ones((n, 25), dtype=np.int64), 0.0)


# -- the .skeleton text file ----------------------------------------------------------------


def _depth(xyz: np.ndarray) -> np.ndarray:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.stack([_DEPTH_X[0] + _DEPTH_X[1] * x / z, _DEPTH_Y[0] + _DEPTH_Y[1] * y / z], -1)


def _color(xyz: np.ndarray) -> np.ndarray:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.stack([_COLOR_X[0] + _COLOR_X[1] * x / z + _COLOR_X[2] / z, _COLOR_Y[0] + _COLOR_Y[1] * y / z], -1)


def _track_frames(track: Track) -> list[str]:
    """The text of each frame of one body: its body line, "25" and 25 joint lines."""
    xyz = track.xyz
    n = len(xyz)
    half = track.heading / 2  # joint orientation: the body's rotation about the vertical axis
    orient = f"{math.cos(half):.7g} 0 {math.sin(half):.7g} 0"
    joint_line = "%.7g %.7g %.7g %.7g %.7g %.7g %.7g " + orient + " %d"
    frame_joints = "\n".join([joint_line] * 25)
    values = np.concatenate([xyz, _depth(xyz), _color(xyz), track.tracking[..., None]], -1)
    rows = values.reshape(n, 25 * 8).tolist()
    spine = xyz[:, 20] - xyz[:, 0]
    lean = np.clip(np.stack([spine[:, 0], -spine[:, 2]], -1) / 0.5, -1, 1).tolist()
    return [
        f"{track.body_id} 0 1 1 1 1 0 {lx:.7g} {ly:.7g} 2\n25\n" + frame_joints % tuple(row)
        for row, (lx, ly) in zip(rows, lean)
    ]


def skeleton_text(rec: Recording) -> str:
    """The recording as the text of a Kinect v2 ``.skeleton`` file."""
    per_track = [_track_frames(tr) for tr in rec.tracks]
    lines = [str(rec.frames)]
    for f in range(rec.frames):
        present = [(tr, texts[f - tr.start]) for tr, texts in zip(rec.tracks, per_track) if tr.start <= f < tr.start + len(texts)]
        lines.append(str(len(present)))
        lines.extend(text for _, text in present)
    text = "\n".join(lines) + "\n"
    return text.replace("\n", "\r\n") if rec.crlf else text


def _write_one(job: tuple[Path, int, int, int]) -> Path:
    raw, seed, action, index = job
    rec = synthesize(seed, action, index)
    path = raw / f"{rec.name}.skeleton"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(skeleton_text(rec).encode("ascii"))
    os.replace(tmp, path)
    return path


def write_synthetic_raw(
    raw_dir: Path | str,
    *,
    seed: int = 0,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    workers: int = 1,
    actions: Sequence[int] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write the synthetic recordings as ``.skeleton`` files into ``raw_dir``; return their paths
    (class by class, in sample order). ``actions`` limits it to some 0-based classes."""
    if samples_per_class < 1:
        raise MMCLError(f"samples_per_class must be at least 1, got {samples_per_class}")
    raw = Path(raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    classes = range(len(ACTIONS)) if actions is None else actions
    jobs = [(raw, seed, a, i) for a in classes for i in range(samples_per_class)]
    from tqdm import tqdm

    paths: list[Path] = []
    with tqdm(total=len(jobs), desc="generate synthetic", unit="file", disable=not progress, mininterval=0.5) as bar:
        if workers <= 1:
            for job in jobs:
                paths.append(_write_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for path in pool.map(_write_one, jobs, chunksize=8):
                    paths.append(path)
                    bar.update()
    return paths


# -- preparing it -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSource(NtuSource):
    """The synthetic recordings read by the NTU reader and denoiser (CTR-GCN semantics, defaults
    unchanged), with the synthetic class names, no missing-skeleton list and the synthetic splits.
    ``seed`` and ``samples_per_class`` are only recorded in dataset.json."""

    seed: int = 0
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS

    name: ClassVar[str] = "synthetic"
    num_classes: ClassVar[int] = len(CLASS_NAMES)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    def skip_reason(self, name: str) -> str | None:
        try:
            action = parse_ntu_name(name)["action"]
        except MMCLError:
            return None  # read() rejects it with the reason
        if action > self.num_classes:
            return f"not a synthetic class (action {action}; there are {self.num_classes})"
        return None

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "generator": "mmcl.data.synthetic (raw files generated into a temporary folder, then removed)",
            "seed": self.seed,
            "samples_per_class": self.samples_per_class,
        }


def prepare_synthetic(
    out: Path | str,
    *,
    seed: int = 0,
    overwrite: bool = False,
    workers: int = 1,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
) -> "PrepareSummary":
    """Generate the synthetic recordings into a temporary raw folder beside ``out`` and prepare
    them with the NTU pipeline into ``out``; the raw folder is removed afterwards."""
    from mmcl.data.prepare import prepare_dataset  # the shared prepare pipeline

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise MMCLError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.raw-", dir=out.parent) as raw:
        write_synthetic_raw(raw, seed=seed, samples_per_class=samples_per_class, workers=workers, progress=True)
        source = SyntheticSource(seed=seed, samples_per_class=samples_per_class)
        summary = prepare_dataset(source, Path(raw), out, workers=workers, overwrite=overwrite)
    summary.seconds = time.perf_counter() - started  # generating the files included
    return summary
