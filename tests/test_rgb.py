"""RGB actor strips: real video files written with OpenCV, real NTU person-frame folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmcl.data.rgb import build_strips, colour_box, expand_box, map_to_video, pick_frames
from mmcl.data.store import DatasetWriter, Sample, open_dataset
from mmcl.errors import MMCLError
from mmcl.graphs import NTU

W, H = 320, 180  # small videos keep the test fast; the crop logic works in pixels of any size
ACTOR = (200, 40, 260, 150)  # x0, y0, x1, y1 of the synthetic actor
HEIGHT = 64


def _colors_for(box: tuple[int, int, int, int], frames: int, m: int = 2) -> np.ndarray:
    """Colour coordinates of 25 joints spread over ``box`` (first actor); second actor absent."""
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(x0, x1, 25), rng.uniform(y0, y1, 25)], -1)
    pts[0] = (x0, y0)  # make the box exact
    pts[1] = (x1, y1)
    colors = np.zeros((frames, m, 25, 2), np.float32)
    colors[:, 0] = pts
    return colors


def _make_dataset(root: Path, samples: dict[str, int], *, colors: bool = True,
                  boxes: dict[str, tuple] | None = None, first_frame: dict[str, int] | None = None) -> Path:
    """A tiny prepared dataset; ``samples`` maps name -> skeleton frame count."""
    out = root / "ds"
    fields = ["first_frame"] if first_frame else []
    with DatasetWriter(out, name="toy", layout=NTU, num_person=2, channels=3, class_names=["a", "b"],
                       has_colors=colors, meta_fields=fields, source={"test": True}) as w:
        for name, t in samples.items():
            box = (boxes or {}).get(name, ACTOR)
            w.add(Sample(name=name, label=0, joints=np.ones((t, 2, 25, 3), np.float32),
                         colors=_colors_for(box, t) if colors else None,
                         meta={"first_frame": first_frame[name]} if first_frame else {}))
        w.finish({"all": {"train": list(samples), "test": []}})
    return out


def _write_video(path: Path, frames: int, box=ACTOR, size=(W, H)) -> None:
    """A real MJPG .avi: dark background, a bright rectangle as the actor, a frame number bar."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), 20, np.uint8)
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = (240, 240, 240)
        writer.write(img)
    writer.release()


def _bright_fraction(img: np.ndarray) -> float:
    return float((img.mean(axis=2) > 128).mean())


def test_frame_picking_and_mapping():
    assert pick_frames(100, 5).tolist() == [10, 30, 50, 70, 90]
    assert pick_frames(3, 5).tolist() == [0, 0, 1, 2, 2]  # short clips repeat frames
    idx = pick_frames(100, 5)
    assert map_to_video(idx, 100, 100, None).tolist() == idx.tolist()
    assert map_to_video(idx, 100, 110, None).tolist() == (idx + 5).tolist()  # centred
    assert map_to_video(idx, 100, 110, 2).tolist() == (idx + 2).tolist()  # recorded offset wins
    assert map_to_video(idx, 100, 50, None).max() <= 49  # short video: stretched over what exists


def test_colour_box_ignores_absent_actors_and_clips():
    pts = np.zeros((2, 25, 2))
    pts[0, :, 0] = np.linspace(100, 200, 25)
    pts[0, :, 1] = np.linspace(50, 300, 25)
    assert colour_box(pts) == (100, 50, 200, 300)
    pts[1, :3] = [[10, 20], [30, 40], [0, 0]]  # second actor, one joint missing
    assert colour_box(pts) == (10, 20, 200, 300)
    assert colour_box(np.zeros((2, 25, 2))) is None
    assert expand_box((100, 50, 200, 300), 0.1, 1920, 1080) == (90, 25, 210, 325)
    assert expand_box((-50, -50, 10, 10), 0.0, 100, 100) == (0, 0, 18, 18)
    assert expand_box((500, 500, 600, 600), 0.0, 100, 100) is None


def test_video_strip_crops_the_actor(tmp_path):
    ds = _make_dataset(tmp_path, {"S001C001P001R001A001": 40, "S001C001P001R001A002": 30})
    videos = tmp_path / "videos"
    (videos / "nested").mkdir(parents=True)
    _write_video(videos / "S001C001P001R001A001_rgb.avi", 40)
    _write_video(videos / "nested" / "S001C001P001R001A002_rgb.avi", 34)  # 4 empty frames deleted

    rejected = build_strips(ds, videos=videos, frames=None, k=5, workers=2, height=HEIGHT, progress=False)
    assert rejected == []
    for name in open_dataset(ds).names:
        strip = cv2.imread(str(ds / "rgb" / f"{name}.jpg"))
        assert strip is not None and strip.shape[0] == HEIGHT
        # the crop is the actor box (60x110) plus 15% margin per side: mostly actor, little background
        x0, y0, x1, y1 = ACTOR
        crop_w = (x1 - x0) * 1.3
        crop_h = (y1 - y0) * 1.3
        assert strip.shape[1] == pytest.approx(5 * crop_w * HEIGHT / crop_h, abs=6)
        assert 0.5 < _bright_fraction(strip) < 0.8  # actor area / crop area = 1/1.69 ~ 0.59
    notes = json.loads((ds / "rgb" / "strips.json").read_text())
    assert notes["crops"] == {"colour": 2} and notes["k"] == 5


def test_two_actors_take_the_union_box(tmp_path):
    name = "S001C001P001R001A050"
    ds = tmp_path / "ds"
    colors = np.zeros((20, 2, 25, 2), np.float32)
    colors[:, 0] = _colors_for((20, 30, 60, 120), 20)[:, 0]
    colors[:, 1] = _colors_for((240, 60, 300, 170), 20)[:, 0]
    with DatasetWriter(ds, name="toy", layout=NTU, num_person=2, channels=3, class_names=["a"],
                       has_colors=True, meta_fields=[], source={}) as w:
        w.add(Sample(name=name, label=0, joints=np.ones((20, 2, 25, 3), np.float32), colors=colors, bodies=2))
        w.finish({"all": {"train": [name], "test": []}})
    videos = tmp_path / "videos"
    videos.mkdir()
    writer = cv2.VideoWriter(str(videos / f"{name}_rgb.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    for _ in range(20):
        img = np.full((H, W, 3), 20, np.uint8)
        img[30:120, 20:60] = 240
        img[60:170, 240:300] = 240
        writer.write(img)
    writer.release()
    assert build_strips(ds, videos=videos, frames=None, k=2, workers=0, height=HEIGHT, progress=False) == []
    strip = cv2.imread(str(ds / "rgb" / f"{name}.jpg"))
    half = strip[:, : strip.shape[1] // 2]
    gray = half.mean(axis=2)
    cols = np.where((gray > 128).any(axis=0))[0]
    # both actors are in the one crop: bright columns at the far left and the far right of it
    assert cols.min() < half.shape[1] * 0.2 and cols.max() > half.shape[1] * 0.8


def test_bad_videos_are_reported_and_the_run_continues(tmp_path):
    names = {"S001C001P001R001A001": 30, "S001C001P001R001A002": 30,
             "S001C001P001R001A003": 30, "S001C001P001R001A004": 30}
    ds = _make_dataset(tmp_path, names)
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "S001C001P001R001A001_rgb.avi", 30)  # good
    _write_video(videos / "S001C001P001R001A002_rgb.avi", 12)  # short
    (videos / "S001C001P001R001A003_rgb.avi").write_bytes(b"this is not a video" * 50)  # unreadable
    # A004: missing
    rejected = dict(build_strips(ds, videos=videos, frames=None, k=5, workers=2, height=HEIGHT, progress=False))
    assert set(rejected) == {"S001C001P001R001A002", "S001C001P001R001A003", "S001C001P001R001A004"}
    assert "short video" in rejected["S001C001P001R001A002"] and "12 frames" in rejected["S001C001P001R001A002"]
    assert "unreadable video" in rejected["S001C001P001R001A003"]
    assert "missing video" in rejected["S001C001P001R001A004"] and str(videos) in rejected["S001C001P001R001A004"]
    written = sorted(p.stem for p in (ds / "rgb").glob("*.jpg"))
    # the short video still gives a strip from the frames that exist; the others give none
    assert written == ["S001C001P001R001A001", "S001C001P001R001A002"]
    short = cv2.imread(str(ds / "rgb" / "S001C001P001R001A002.jpg"))
    assert _bright_fraction(short) > 0.5


def test_no_colour_coordinates_falls_back_to_centre_crop_and_says_so(tmp_path, caplog):
    ds = _make_dataset(tmp_path, {"S001C001P001R001A001": 10}, colors=False)
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "S001C001P001R001A001_rgb.avi", 10)
    with caplog.at_level("WARNING"):
        assert build_strips(ds, videos=videos, frames=None, k=3, workers=1, height=HEIGHT, progress=False) == []
    assert "no colour-image joint coordinates" in caplog.text
    strip = cv2.imread(str(ds / "rgb" / "S001C001P001R001A001.jpg"))
    assert strip.shape == (HEIGHT, 3 * HEIGHT, 3)  # three centre squares
    assert "CENTRE SQUARE" in (ds / "rgb" / "README.txt").read_text()
    assert json.loads((ds / "rgb" / "strips.json").read_text())["crops"] == {"centre": 1}


def _box_detector(frame: np.ndarray):
    """A stand-in person detector: the bounding box of bright pixels."""
    ys, xs = np.where(frame.mean(axis=2) > 128)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


def test_detector_hook_is_used_without_colour_coordinates(tmp_path):
    ds = _make_dataset(tmp_path, {"S001C001P001R001A001": 10}, colors=False)
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "S001C001P001R001A001_rgb.avi", 10)
    assert build_strips(ds, videos=videos, frames=None, k=3, workers=2, height=HEIGHT,
                        detector=_box_detector, progress=False) == []
    strip = cv2.imread(str(ds / "rgb" / "S001C001P001R001A001.jpg"))
    assert _bright_fraction(strip) > 0.5  # the actor, not the centre of the frame (which has none)
    assert json.loads((ds / "rgb" / "strips.json").read_text())["crops"] == {"detector": 1}


def test_recorded_first_frame_selects_the_right_video_frames(tmp_path):
    # The actor is only visible in video frames 10..29; the skeleton kept those 20 frames.
    name = "S001C001P001R001A001"
    ds = _make_dataset(tmp_path, {name: 20}, first_frame={name: 10})
    videos = tmp_path / "videos"
    videos.mkdir()
    writer = cv2.VideoWriter(str(videos / f"{name}_rgb.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    for i in range(40):
        img = np.full((H, W, 3), 20, np.uint8)
        if 10 <= i < 30:
            x0, y0, x1, y1 = ACTOR
            img[y0:y1, x0:x1] = 240
        writer.write(img)
    writer.release()
    assert build_strips(ds, videos=videos, frames=None, k=5, workers=0, height=HEIGHT, progress=False) == []
    strip = cv2.imread(str(ds / "rgb" / f"{name}.jpg"))
    width = strip.shape[1] // 5
    for j in range(5):  # every one of the five crops shows the actor
        assert _bright_fraction(strip[:, j * width:(j + 1) * width]) > 0.4


def test_frame_index_array_maps_interior_gaps_exactly(tmp_path):
    # The actor is visible in video frames 5..9 and 20..29; the dataset stored exactly those 15
    # frames and records their raw indices in a frame_index array (as NTU preparation may).
    name = "S001C001P001R001A001"
    ds = _make_dataset(tmp_path, {name: 15})
    raw = np.r_[5:10, 20:30].astype(np.int32)
    np.save(ds / "frame_index.npy", raw)
    info = json.loads((ds / "dataset.json").read_text())
    info["arrays"]["frame_index"] = {"file": "frame_index.npy", "dtype": "int32", "shape": [15]}
    (ds / "dataset.json").write_text(json.dumps(info))
    videos = tmp_path / "videos"
    videos.mkdir()
    writer = cv2.VideoWriter(str(videos / f"{name}_rgb.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    for i in range(35):
        img = np.full((H, W, 3), 20, np.uint8)
        if i in set(raw.tolist()):
            x0, y0, x1, y1 = ACTOR
            img[y0:y1, x0:x1] = 240
        writer.write(img)
    writer.release()
    assert build_strips(ds, videos=videos, frames=None, k=5, workers=0, height=HEIGHT, progress=False) == []
    strip = cv2.imread(str(ds / "rgb" / f"{name}.jpg"))
    width = strip.shape[1] // 5
    for j in range(5):
        assert _bright_fraction(strip[:, j * width:(j + 1) * width]) > 0.4
    assert "exact" in json.loads((ds / "rgb" / "strips.json").read_text())["frame_mapping"]


# -- real NTU person frames ---------------------------------------------------------------------

REAL = {  # name -> (group, frames in the folder)
    "S001C001P001R001A001": ("NTU60", 103),
    "S001C001P001R001A002": ("NTU60", 158),
    "S018C001P008R001A061": ("NTU120", 161),
    "S018C001P008R001A062": ("NTU120", 128),
}


def test_real_person_frames_make_strips(shared_data, tmp_path):
    root = shared_data / "ntu-rgb" / "person-frames"
    samples = {name: n for name, (_, n) in REAL.items()}
    samples["S001C001P001R001A001"] = 103
    samples["S018C001P008R001A062"] = 140  # skeleton longer than the frame folder: a mismatch
    samples["S002C001P001R001A001"] = 50  # no folder
    ds = _make_dataset(tmp_path, samples, colors=False)
    rejected = dict(build_strips(ds, videos=None, frames=root, k=5, workers=2, height=HEIGHT, progress=False))
    assert set(rejected) == {"S018C001P008R001A062", "S002C001P001R001A001"}
    assert "mismatch" in rejected["S018C001P008R001A062"] and "128 frames" in rejected["S018C001P008R001A062"]
    assert "missing frames" in rejected["S002C001P001R001A001"]

    # the strip is exactly the chosen frames, resized and concatenated
    name, n = "S001C001P001R001A001", 103
    chosen = pick_frames(n, 5)
    frames = [cv2.imread(str(root / "NTU60" / name / f"{i}.jpg")) for i in chosen]
    expected_w = sum(max(1, round(f.shape[1] * HEIGHT / f.shape[0])) for f in frames)
    strip = cv2.imread(str(ds / "rgb" / f"{name}.jpg"))
    assert strip.shape == (HEIGHT, expected_w, 3)
    first = cv2.resize(frames[0], (round(frames[0].shape[1] * HEIGHT / frames[0].shape[0]), HEIGHT),
                       interpolation=cv2.INTER_AREA)
    diff = np.abs(strip[:, : first.shape[1]].astype(int) - first.astype(int)).mean()
    assert diff < 8  # same picture up to JPEG re-encoding
    assert (ds / "rgb" / "S018C001P008R001A062.jpg").is_file()  # made from the frames that exist
    assert not (ds / "rgb" / "S002C001P001R001A001.jpg").exists()


def test_unreadable_frame_image_is_reported(shared_data, tmp_path):
    src = shared_data / "ntu-rgb" / "person-frames" / "NTU60" / "S001C001P001R001A001"
    root = tmp_path / "frames" / "NTU60" / "S001C001P001R001A001"
    root.mkdir(parents=True)
    for i in range(20):
        shutil.copy(src / f"{i}.jpg", root / f"{i}.jpg")
    (root / "10.jpg").write_bytes(b"broken")
    ds = _make_dataset(tmp_path, {"S001C001P001R001A001": 20}, colors=False)
    rejected = dict(build_strips(ds, videos=None, frames=tmp_path / "frames", k=5, workers=0, height=HEIGHT,
                                 progress=False))
    assert "10.jpg" in rejected["S001C001P001R001A001"]
    assert (ds / "rgb" / "S001C001P001R001A001.jpg").is_file()  # four good crops still make a strip


def test_bad_arguments_are_clear_errors(tmp_path):
    ds = _make_dataset(tmp_path, {"S001C001P001R001A001": 10})
    with pytest.raises(MMCLError, match="exactly one of --videos"):
        build_strips(ds, videos=None, frames=None, k=5, workers=0)
    with pytest.raises(MMCLError, match="not a folder"):
        build_strips(ds, videos=tmp_path / "nope", frames=None, k=5, workers=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMCLError, match="no <name>_rgb.avi videos found"):
        build_strips(ds, videos=tmp_path / "empty", frames=None, k=5, workers=0)
