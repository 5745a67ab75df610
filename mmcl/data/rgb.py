"""RGB actor strips: K frames of a sample, the actor cropped from each, concatenated left to right.

MMCL's feature-alignment branch (FAM) learns from one image per sample. ``build_strips`` makes it:

* ``videos``: NTU-style ``<name>_rgb.avi`` colour videos (any folder depth), read with OpenCV.
  The crop of each chosen frame is the bounding box of that frame's Kinect colour-image joint
  coordinates (all present actors together), plus a margin. Datasets without colour coordinates
  fall back to a pluggable person detector, else to a centre crop of the frame, and say so.
* ``frames``: per-frame folders ``<root>/<NTU60|NTU120>/<name>/<i>.jpg`` (one image per video
  frame, already cropped to the actor, as MMCL's own preprocessing writes them); the chosen
  frames are concatenated as they are.

Either way the crops are resized to a common height and written as ``<dataset>/rgb/<name>.jpg``
(atomically). ``rgb/README.txt`` and ``rgb/strips.json`` record how the strips were made.

Skeleton frames vs video frames. NTU videos have as many frames as the ``.skeleton`` file, but
a prepared dataset keeps only the frames with a body, so stored frame ``t`` is not always video
frame ``t``. The mapping uses the best the dataset offers, in this order:

1. an optional array ``frame_index`` (dataset.json ``arrays``; int, one row per stored frame):
   the raw (video) frame of each stored frame. Exact, even for deleted frames in the middle.
2. a sample-index meta field ``first_frame``: video frame = ``first_frame + t`` (exact when
   frames were deleted only at the start and end).
3. otherwise the kept frames are assumed centred: ``t + (n_video - T) // 2``, wrong by at most
   half the number of deleted frames (NTU deletes few, mostly at the ends).

A video with fewer frames than the skeleton is a length mismatch: the strip is made from the
frames that exist (skeleton frames stretched over them) and the sample is reported. Missing or
unreadable input: no strip, sample reported. The run always continues.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mmcl.data.store import SkeletonDataset, open_dataset
from mmcl.errors import MMCLError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")

# A detector takes one BGR frame (H, W, 3 uint8) and returns a person box (x0, y0, x1, y1) or None.
# It must be picklable (a module-level function or a small object) since workers run it.
Detector = Callable[[np.ndarray], "tuple[float, float, float, float] | None"]


@dataclass(frozen=True)
class StripSettings:
    """How strips are made (recorded in rgb/strips.json)."""

    k: int = 5  # frames per strip
    height: int = 256  # common crop height in pixels
    margin: float = 0.15  # box grown by this fraction of its size on every side
    quality: int = 90  # JPEG quality


@dataclass
class StripResult:
    """What happened to one sample."""

    name: str
    written: bool
    crop: str  # "colour", "detector", "centre", "frames" or "" when nothing was written
    problem: str = ""  # non-empty: reported in the rejection list


# ---------------------------------------------------------------------------------------------
# pure helpers (tested directly)


def pick_frames(num_frames: int, k: int) -> np.ndarray:
    """Indices of ``k`` evenly spaced frames of ``num_frames``: the centres of k equal segments
    (so the very first and last frames, where the actor is often still entering, are avoided).
    Short clips repeat frames, so every strip has exactly ``k`` crops."""
    if num_frames < 1 or k < 1:
        raise MMCLError(f"cannot pick {k} frames from a clip of {num_frames} frames")
    return np.minimum(((np.arange(k) + 0.5) * num_frames / k).astype(np.int64), num_frames - 1)


def map_to_video(skeleton_idx: np.ndarray, num_skeleton: int, num_video: int, first_frame: int | None) -> np.ndarray:
    """Video frame of each skeleton frame (see the module docstring for the rule)."""
    if num_video >= num_skeleton:
        offset = first_frame if first_frame is not None and first_frame >= 0 else (num_video - num_skeleton) // 2
        return np.minimum(skeleton_idx + offset, num_video - 1)
    # fewer video frames than skeleton frames: stretch the skeleton over the frames that exist
    scale = (num_video - 1) / max(num_skeleton - 1, 1)
    return np.round(skeleton_idx * scale).astype(np.int64)


def colour_box(points: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box (x0, y0, x1, y1) of colour coordinates (..., 2), ignoring absent joints
    (zeros, NaN: an actor slot that is empty is all zeros), or None when nothing is present."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(pts).all(1) & (np.abs(pts).sum(1) > 0)
    if not ok.any():
        return None
    pts = pts[ok]
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def expand_box(
    box: tuple[float, float, float, float], margin: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Grow ``box`` by ``margin`` of its size on each side (at least 8 px) and clip it to the
    frame; None when nothing of it is inside the frame."""
    x0, y0, x1, y1 = box
    mx = max((x1 - x0) * margin, 8.0)
    my = max((y1 - y0) * margin, 8.0)
    ix0, iy0 = max(int(np.floor(x0 - mx)), 0), max(int(np.floor(y0 - my)), 0)
    ix1, iy1 = min(int(np.ceil(x1 + mx)), width), min(int(np.ceil(y1 + my)), height)
    if ix1 - ix0 < 2 or iy1 - iy0 < 2:
        return None
    return ix0, iy0, ix1, iy1


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The central square of a frame (side = the shorter edge)."""
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def concat_strip(crops: Sequence[np.ndarray], height: int) -> np.ndarray:
    """Resize crops (BGR) to a common height and concatenate them left to right."""
    import cv2

    resized = []
    for crop in crops:
        h, w = crop.shape[:2]
        new_w = max(1, int(round(w * height / h)))
        interp = cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
        resized.append(cv2.resize(crop, (new_w, height), interpolation=interp))
    return np.concatenate(resized, axis=1)


def write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    """Encode a BGR image as JPEG and write it atomically."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MMCLError(f"{path}: JPEG encoding failed")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# finding the inputs


def index_videos(root: Path) -> dict[str, Path]:
    """Sample name -> video file under ``root`` (any depth). ``<name>_rgb.avi`` is NTU's naming;
    ``<name>.avi``/``.mp4``/... are accepted too."""
    out: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            stem, suffix = os.path.splitext(f)
            if suffix.lower() not in VIDEO_SUFFIXES:
                continue
            name = stem[: -len("_rgb")] if stem.endswith("_rgb") else stem
            out.setdefault(name, Path(dirpath) / f)
    return out


def index_frame_dirs(root: Path) -> dict[str, Path]:
    """Sample name -> per-frame folder: ``root/<name>`` or ``root/<group>/<name>`` (NTU60/NTU120)."""
    out: dict[str, Path] = {}
    with os.scandir(root) as children:
        for child in sorted((c for c in children if c.is_dir()), key=lambda c: c.name):
            with os.scandir(child.path) as entries:
                subdirs = [e for e in entries if e.is_dir()]
            if subdirs:  # a group folder such as NTU60/
                for g in sorted(subdirs, key=lambda e: e.name):
                    out.setdefault(g.name, Path(g.path))
            else:
                out.setdefault(child.name, Path(child.path))
    return out


def list_frames(folder: Path) -> dict[int, Path]:
    """Frame index -> image file in a per-frame folder (files named ``<i>.jpg``)."""
    frames: dict[int, Path] = {}
    for f in folder.iterdir():
        stem, suffix = os.path.splitext(f.name)
        if suffix.lower() in FRAME_SUFFIXES and stem.isdigit():
            frames[int(stem)] = f
    return frames


# ---------------------------------------------------------------------------------------------
# one sample


@dataclass
class _Job:
    """Everything a worker needs; pickled once per worker."""

    dataset: SkeletonDataset
    out_dir: Path
    source: Path
    videos: dict[str, Path] | None
    frame_dirs: dict[str, Path] | None
    settings: StripSettings
    detector: Detector | None = None
    skip_existing: bool = False


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    _JOB = job


def _run_one(name: str) -> StripResult:
    assert _JOB is not None
    return strip_for_sample(_JOB, name)


def strip_for_sample(job: _Job, name: str) -> StripResult:
    """Build and write one strip; never raises for bad input (returns the problem instead)."""
    target = job.out_dir / f"{name}.jpg"
    if job.skip_existing and target.is_file():
        return StripResult(name, True, "existing")
    try:
        if job.frame_dirs is not None:
            return _strip_from_frames(job, name, target)
        return _strip_from_video(job, name, target)
    except MMCLError as exc:
        return StripResult(name, False, "", str(exc))


def _first_frame(job: _Job, name: str) -> int | None:
    value = job.dataset.info_of(name).meta.get("first_frame")
    return None if value is None or value < 0 else int(value)


def _raw_frame_index(job: _Job, name: str) -> np.ndarray | None:
    """The raw (video) frame of each stored frame, when the dataset keeps ``frame_index``."""
    entry = job.dataset.info["arrays"].get("frame_index")
    if entry is None:
        return None
    s = job.dataset.info_of(name)
    arr = np.load(job.dataset.path / entry["file"], mmap_mode="r", allow_pickle=False)
    return np.asarray(arr[s.offset : s.offset + s.frames]).reshape(s.frames, -1)[:, 0].astype(np.int64)


def video_frames(job: _Job, name: str, skel_idx: np.ndarray, num_video: int) -> np.ndarray:
    """Video frames for the chosen skeleton frames (rules 1-3 of the module docstring)."""
    t = job.dataset.info_of(name).frames
    raw = _raw_frame_index(job, name)
    if raw is not None and num_video > int(raw.max(initial=-1)):
        return raw[skel_idx]
    return map_to_video(skel_idx, t, num_video, _first_frame(job, name))


def _strip_from_frames(job: _Job, name: str, target: Path) -> StripResult:
    import cv2

    assert job.frame_dirs is not None
    folder = job.frame_dirs.get(name)
    if folder is None:
        return StripResult(name, False, "", f"missing frames: no folder {name}/ under {job.source} (no strip)")
    frames = list_frames(folder)
    if not frames:
        return StripResult(name, False, "", f"no frame images in {folder} (no strip)")
    t = job.dataset.info_of(name).frames
    n = max(frames) + 1
    problem = ""
    if n < t:
        problem = f"frame/skeleton length mismatch: {folder} has {n} frames, the skeleton {t}; strip made from the frames that exist"
    chosen = video_frames(job, name, pick_frames(t, job.settings.k), n)
    crops, unreadable = [], []
    available = np.array(sorted(frames))
    for f in chosen:
        nearest = int(available[np.abs(available - f).argmin()])  # a gap in the numbering: nearest frame
        img = cv2.imread(str(frames[nearest]), cv2.IMREAD_COLOR)
        if img is None:
            unreadable.append(frames[nearest].name)
            continue
        crops.append(img)
    if unreadable:
        problem = "; ".join(filter(None, [problem, f"unreadable frame image(s) {', '.join(sorted(set(unreadable)))} in {folder}"]))
    if not crops:
        return StripResult(name, False, "", problem + " (no strip)")
    write_jpeg(target, concat_strip(crops, job.settings.height), job.settings.quality)
    return StripResult(name, True, "frames", problem)


def _read_video_frames(path: Path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """Decode ``path`` sequentially up to the last wanted frame; return {index: BGR frame} and
    the number of frames actually decoded. (Sequential grab is exact; seeking is not, for many
    codecs.)"""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MMCLError(f"unreadable video {path}: OpenCV cannot open it (no strip)")
        want = set(int(i) for i in wanted)
        last = max(want)
        got: dict[int, np.ndarray] = {}
        i = 0
        while i <= last:
            if not cap.grab():
                break
            if i in want:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    got[i] = frame
            i += 1
        return got, i
    finally:
        cap.release()


def _video_length(path: Path) -> int:
    """Frame count from the container header (0 when unknown or unopenable)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MMCLError(f"unreadable video {path}: OpenCV cannot open it (no strip)")
        return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        cap.release()


def _strip_from_video(job: _Job, name: str, target: Path) -> StripResult:
    assert job.videos is not None
    path = job.videos.get(name)
    if path is None:
        return StripResult(name, False, "", f"missing video: no {name}_rgb.avi under {job.source} (no strip)")
    info = job.dataset.info_of(name)
    t = info.frames
    n = _video_length(path)
    problems = []
    if n == 0:
        raise MMCLError(f"unreadable video {path}: no frames (no strip)")
    if n < t:
        problems.append(f"short video: {path.name} has {n} frames, the skeleton {t}; strip made from the frames that exist")
    skel_idx = pick_frames(t, job.settings.k)
    vid_idx = video_frames(job, name, skel_idx, n)
    frames, decoded = _read_video_frames(path, vid_idx)
    if len(frames) < len(set(vid_idx.tolist())):
        # the header promised more frames than the file holds: re-map over what was decoded
        if decoded == 0:
            raise MMCLError(f"unreadable video {path}: no frame could be decoded (no strip)")
        problems.append(f"short video: {path.name} decodes {decoded} of the {n} frames its header declares; strip made from the frames that exist")
        vid_idx = video_frames(job, name, skel_idx, decoded)
        frames, _ = _read_video_frames(path, vid_idx)
        if not frames:
            raise MMCLError(f"unreadable video {path}: no frame could be decoded (no strip)")
    colors = job.dataset.colors(name)
    sample_box = colour_box(colors) if colors is not None else None
    crops, kinds = [], set()
    for s, v in zip(skel_idx, vid_idx):
        frame = frames.get(int(v))
        if frame is None:
            continue
        crop, kind = _crop(frame, colors[s] if colors is not None else None, sample_box, job)
        crops.append(crop)
        kinds.add(kind)
    if not crops:
        raise MMCLError(f"unreadable video {path}: none of the chosen frames could be decoded (no strip)")
    kind = "centre" if "centre" in kinds else ("detector" if "detector" in kinds else "colour")
    if kind == "centre" and colors is not None:
        problems.append("no usable colour coordinates in some chosen frames; centre crop used there")
    write_jpeg(target, concat_strip(crops, job.settings.height), job.settings.quality)
    return StripResult(name, True, kind, "; ".join(problems))


def _crop(frame: np.ndarray, points: np.ndarray | None, sample_box, job: _Job) -> tuple[np.ndarray, str]:
    """Crop one frame: this frame's colour box, else the whole sample's, else the detector's,
    else the centre square."""
    h, w = frame.shape[:2]
    m = job.settings.margin
    if points is not None:
        for box in (colour_box(points), sample_box):
            if box is not None and (rect := expand_box(box, m, w, h)) is not None:
                x0, y0, x1, y1 = rect
                return frame[y0:y1, x0:x1], "colour"
    if job.detector is not None:
        box = job.detector(frame)
        if box is not None and (rect := expand_box(box, m, w, h)) is not None:
            x0, y0, x1, y1 = rect
            return frame[y0:y1, x0:x1], "detector"
    x0, y0, x1, y1 = centre_box(w, h)
    return frame[y0:y1, x0:x1], "centre"


# ---------------------------------------------------------------------------------------------
# the whole dataset


def build_strips(
    dataset_dir: Path,
    *,
    videos: Path | None,
    frames: Path | None,
    k: int = 5,
    workers: int = 4,
    height: int = 256,
    margin: float = 0.15,
    detector: Detector | None = None,
    skip_existing: bool = False,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """Write ``<dataset_dir>/rgb/<name>.jpg`` for every sample; return the (name, reason) pairs of
    samples with bad input (missing, unreadable or short video, frame/skeleton length mismatch).

    Exactly one of ``videos`` (a folder of ``<name>_rgb.avi``) and ``frames`` (per-frame folders)
    is given. ``workers`` processes decode in parallel (0 or 1: in this process).
    """
    if (videos is None) == (frames is None):
        raise MMCLError("RGB strips need exactly one of --videos DIR and --frames DIR")
    source = Path(videos if videos is not None else frames)  # type: ignore[arg-type]
    if not source.is_dir():
        flag = "--videos" if videos is not None else "--frames"
        raise MMCLError(f"{flag} {source}: not a folder")
    if k < 1 or height < 8:
        raise MMCLError(f"strips need k >= 1 frames and a height >= 8 px (got k={k}, height={height})")
    ds = open_dataset(dataset_dir)
    settings = StripSettings(k=k, height=height, margin=margin)
    out_dir = Path(dataset_dir) / "rgb"
    out_dir.mkdir(exist_ok=True)
    job = _Job(
        dataset=ds,
        out_dir=out_dir,
        source=source,
        videos=index_videos(source) if videos is not None else None,
        frame_dirs=index_frame_dirs(source) if frames is not None else None,
        settings=settings,
        detector=detector,
        skip_existing=skip_existing,
    )
    indexed = job.videos if job.videos is not None else job.frame_dirs
    if not indexed:
        what = "<name>_rgb.avi videos" if videos is not None else "per-frame folders <root>/<NTU60|NTU120>/<name>/"
        raise MMCLError(f"{source}: no {what} found")
    mode = "videos" if videos is not None else "frames"
    if mode == "videos" and not ds.has_colors:
        how = "a person detector" if detector is not None else "a centre crop of each frame"
        log.warning("%s has no colour-image joint coordinates: strips use %s", ds.path, how)

    results = list(_run_all(job, ds.names, workers, progress))
    rejected = [(r.name, r.problem) for r in results if r.problem]
    _write_notes(out_dir, mode, source, settings, ds, results, detector is not None)
    return rejected


def _run_all(job: _Job, names: Sequence[str], workers: int, progress: bool) -> Iterator[StripResult]:
    from tqdm.auto import tqdm

    if workers <= 1 or len(names) < 2:
        _init_worker(job)
        with tqdm(total=len(names), desc="rgb strips", unit="sample", disable=not progress) as bar:
            for name in names:
                yield _run_one(name)
                bar.update()
        return
    # fork where the platform has it: workers start at once and need no importable __main__
    # (spawn re-imports it, which hangs for scripts run from stdin). The pool is made before the
    # progress bar, so no tqdm thread exists at fork time; the parent never calls OpenCV first.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(min(workers, len(names)), initializer=_init_worker, initargs=(job,)) as pool:
        with tqdm(total=len(names), desc="rgb strips", unit="sample", disable=not progress) as bar:
            for result in pool.imap_unordered(_run_one, names, chunksize=4):
                yield result
                bar.update()


def _write_notes(out_dir: Path, mode: str, source: Path, settings: StripSettings, ds: SkeletonDataset,
                 results: Sequence[StripResult], has_detector: bool) -> None:
    """rgb/strips.json (machine-readable) and rgb/README.txt (for a person)."""
    crops: dict[str, int] = {}
    for r in results:
        if r.written:
            crops[r.crop] = crops.get(r.crop, 0) + 1
    written = sum(crops.values())
    if "frame_index" in ds.info["arrays"]:
        mapping = "stored frame t -> video frame frame_index[t] (exact)"
    elif "first_frame" in ds.info.get("meta_fields", []):
        mapping = "stored frame t -> video frame first_frame + t (sample index)"
    else:
        mapping = "stored frame t -> video frame t + (n_video - T) // 2 (kept frames assumed centred)"
    notes = {
        "mode": mode,
        "source": str(source),
        **asdict(settings),
        "frame_mapping": mapping,
        "colour_coordinates": ds.has_colors,
        "detector": has_detector,
        "strips": written,
        "samples": len(results),
        "crops": crops,
        "problems": sum(1 for r in results if r.problem),
    }
    _atomic_text(out_dir / "strips.json", json.dumps(notes, indent=1) + "\n")
    lines = [
        f"RGB strips: {written} of {len(results)} samples, {settings.k} frames each, height {settings.height} px.",
        f"Source: {mode} in {source}.",
    ]
    if mode == "frames":
        lines.append("Frames were already cropped to the actor; they are concatenated as they are.")
    else:
        lines.append(f"Frame mapping: {mapping}.")
        if ds.has_colors:
            lines.append(f"Crop: bounding box of the frame's colour-image joint coordinates (all actors), margin {settings.margin:.0%}.")
        else:
            lines.append("This dataset has NO colour-image joint coordinates: "
                         + ("a person detector chose the crop (centre crop where it found none)." if has_detector
                            else "each crop is the CENTRE SQUARE of the frame, not a detected actor."))
        if crops.get("centre"):
            lines.append(f"{crops['centre']} strip(s) used a centre crop for at least one frame.")
    _atomic_text(out_dir / "README.txt", "\n".join(lines) + "\n")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
