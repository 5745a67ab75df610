"""SkeletonClips: CTR-GCN's per-sample temporal steps for the NTU and NW-UCLA recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmcl.data.loading import SkeletonClips, crop_bounds, ucla_frame_indices
from mmcl.data.store import DatasetWriter, Sample, open_dataset
from mmcl.errors import MMCLError
from mmcl.graphs import NTU, UCLA, Layout


def write_dataset(path: Path, clips: dict[str, np.ndarray], layout: Layout = NTU) -> Path:
    """A tiny prepared dataset: name -> joints (T, M, V, 3); labels cycle over 3 classes."""
    m = next(iter(clips.values())).shape[1]
    with DatasetWriter(path, name="tiny", layout=layout, num_person=m, channels=3,
                       class_names=["a", "b", "c"], has_colors=False, meta_fields=[], source={}) as w:
        for i, (name, joints) in enumerate(clips.items()):
            w.add(Sample(name, i % 3, joints.astype(np.float32), bodies=int(joints[:, 1:].any()) + 1))
        w.finish({"all": {"train": list(clips), "test": list(clips)}})
    return path


def ramp(frames: int, persons: int = 2, joints: int = 25) -> np.ndarray:
    """Every coordinate of frame t equals t (second actor present)."""
    return np.broadcast_to(np.arange(frames, dtype=np.float32)[:, None, None, None],
                           (frames, persons, joints, 3)).copy()


def random_clip(rng, frames: int, persons: int = 2, joints: int = 25, one_actor: bool = False) -> np.ndarray:
    x = rng.normal(size=(frames, persons, joints, 3)).astype(np.float32) + 1.0
    if one_actor:
        x[:, 1:] = 0
    return x


@pytest.fixture
def ntu_ds(tmp_path):
    rng = np.random.default_rng(0)
    clips = {
        "ramp100": ramp(100), "ramp30": ramp(30), "one_frame": random_clip(rng, 1),
        "solo": random_clip(rng, 80, one_actor=True), "duo": random_clip(rng, 150),
        "long": random_clip(rng, 300),
    }
    return open_dataset(write_dataset(tmp_path / "ntu", clips))


@pytest.fixture
def ucla_ds(tmp_path):
    rng = np.random.default_rng(1)
    clips = {f"u{i}": random_clip(rng, t, persons=1, joints=20) for i, t in enumerate([1, 12, 52, 130])}
    return open_dataset(write_dataset(tmp_path / "ucla", clips, UCLA))


def clips(ds, **kw) -> SkeletonClips:
    opts = dict(recipe="ntu", train=False, window=64, num_person=2, seed=7)
    opts.update(kw)
    return SkeletonClips(ds, ds.names, **opts)


def item(dataset: SkeletonClips, name: str) -> dict:
    return dataset[dataset.names.index(name)]


# -- NTU: crop and resize -----------------------------------------------------------------
def test_centre_crop_indices():
    assert crop_bounds(100, train=False) == (2, 96)  # bias = int(0.05 * 100 / 2) = 2
    assert crop_bounds(300, train=False) == (7, 286)
    assert crop_bounds(40, train=False) == (1, 38)
    assert crop_bounds(39, train=False) == (0, 39)
    assert crop_bounds(1, train=False) == (0, 1)
    assert crop_bounds(100, train=False, test_crop=0.5) == (25, 50)


def test_train_crop_at_least_64_and_within_the_clip():
    rng = np.random.default_rng(0)
    for frames in (1, 40, 64, 65, 100, 300):
        for _ in range(200):
            start, length = crop_bounds(frames, train=True, rng=rng)
            assert min(frames, 64) <= length <= frames
            assert 0 <= start and start + length <= frames
    # with a fixed ratio, the length is floor(frames * p), raised to 64
    assert crop_bounds(300, train=True, rng=rng, crop_range=(0.5, 0.5))[1] == 150
    assert crop_bounds(100, train=True, rng=rng, crop_range=(0.5, 0.5))[1] == 64
    lengths = {crop_bounds(300, train=True, rng=rng)[1] for _ in range(500)}
    assert min(lengths) < 170 and max(lengths) > 280  # p spans [0.5, 1]


@pytest.mark.parametrize("frames", [100, 30])
def test_test_clip_is_the_resized_centre_crop_of_a_ramp(ntu_ds, frames):
    x = item(clips(ntu_ds), f"ramp{frames}")["x"]
    assert x.shape == (3, 64, 25, 2) and x.dtype == torch.float32
    start, length = crop_bounds(frames, train=False)
    # linear interpolation of a ramp with align_corners=False: source position, clamped
    pos = np.clip((np.arange(64) + 0.5) * length / 64 - 0.5, 0, length - 1) + start
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), pos, atol=1e-4)
    assert torch.allclose(x, x[:1, :, :1, :1].expand_as(x))  # same resize for every channel/joint/actor


def test_resize_equals_upstream_bilinear(ntu_ds):
    """CTR-GCN resizes with a 2-D bilinear call over (C*V*M, T); the numbers must agree."""
    ds = clips(ntu_ds, test_crop=1.0)
    raw = torch.from_numpy(ntu_ds.joints("duo")).permute(3, 0, 2, 1)  # C, T, V, M
    c, t, v, m = raw.shape
    flat = raw.permute(0, 2, 3, 1).reshape(1, 1, c * v * m, t)
    ref = F.interpolate(flat, size=(c * v * m, 64), mode="bilinear", align_corners=False)
    ref = ref.reshape(c, v, m, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(item(ds, "duo")["x"], ref, rtol=1e-6, atol=1e-6)


def test_train_clips_are_random_crops(ntu_ds):
    ds = clips(ntu_ds, train=True)
    x = item(ds, "ramp100")["x"][0, :, 0, 0].numpy()
    assert x.shape == (64,) and np.all(np.diff(x) >= 0)
    span = x[-1] - x[0]
    assert 0 <= x[0] and x[-1] <= 99 and span >= 62  # at least 64 of the 100 frames
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(round(float(item(ds, "ramp100")["x"][0, 0, 0, 0]), 3))
    assert len(starts) > 1


def test_single_frame_clip(ntu_ds):
    raw = ntu_ds.joints("one_frame")[0]  # M, V, C
    for train in (False, True):
        x = item(clips(ntu_ds, train=train), "one_frame")["x"]
        assert x.shape == (3, 64, 25, 2)
        expected = torch.from_numpy(raw).permute(2, 1, 0)[:, None].expand(3, 64, 25, 2)
        torch.testing.assert_close(x, expected)


# -- NTU: persons --------------------------------------------------------------------------
def test_pad_second_actor(ntu_ds):
    off = item(clips(ntu_ds), "solo")["x"]
    on = item(clips(ntu_ds, pad_second_actor=True), "solo")["x"]
    assert torch.all(off[..., 1] == 0) and off[..., 0].abs().sum() > 0
    torch.testing.assert_close(on[..., 1], on[..., 0])
    torch.testing.assert_close(on[..., 0], off[..., 0])
    # a two-actor sample keeps its own second actor either way
    duo_on = item(clips(ntu_ds, pad_second_actor=True), "duo")["x"]
    torch.testing.assert_close(duo_on, item(clips(ntu_ds), "duo")["x"])
    assert not torch.allclose(duo_on[..., 1], duo_on[..., 0])
    # the stored dataset is untouched
    assert not ntu_ds.joints("solo")[:, 1].any()


def test_num_person_selects_or_pads(ntu_ds):
    two = item(clips(ntu_ds), "duo")["x"]
    one = item(clips(ntu_ds, num_person=1), "duo")["x"]
    three = item(clips(ntu_ds, num_person=3), "duo")["x"]
    assert one.shape[-1] == 1 and three.shape[-1] == 3
    torch.testing.assert_close(one[..., 0], two[..., 0])
    torch.testing.assert_close(three[..., :2], two)
    assert torch.all(three[..., 2] == 0)


# -- NW-UCLA -------------------------------------------------------------------------------
def upstream_ucla(joints: np.ndarray, idx: np.ndarray, agx=0.0, agy=0.0, s=1.0) -> np.ndarray:
    """feeder_ucla's steps on (T, V, 3): centre on joint 1 of frame 0, rotate/scale as row
    vectors, min-max each axis over all frames, then take frames ``idx``. Returns (3, T, V)."""
    value = joints - joints[0, 1]
    rx = np.array([[1, 0, 0], [0, np.cos(agx), np.sin(agx)], [0, -np.sin(agx), np.cos(agx)]])
    ry = np.array([[np.cos(agy), 0, -np.sin(agy)], [0, 1, 0], [np.sin(agy), 0, np.cos(agy)]])
    flat = value.reshape(-1, 3) @ (ry @ (rx @ np.eye(3) * s))
    flat = (flat - flat.min(0)) / (flat.max(0) - flat.min(0)) * 2 - 1
    return flat.reshape(value.shape)[idx].transpose(2, 0, 1)


def test_ucla_test_clip_matches_upstream(ucla_ds):
    ds = clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=False)
    for name in ("u2", "u3"):
        joints = ucla_ds.joints(name)[:, 0].astype(np.float64)
        idx = np.linspace(0, len(joints) - 1, 52).astype(int)
        x = item(ds, name)["x"]
        assert x.shape == (3, 52, 20, 1)
        np.testing.assert_allclose(x[..., 0].numpy(), upstream_ucla(joints, idx), atol=1e-5)


def test_ucla_minmax_range_is_exactly_minus_one_to_one(ucla_ds):
    # test frames cover every frame of a clip of <= 52 frames, so each axis hits both ends
    ds = clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=False)
    for name in ("u1", "u2"):
        x = item(ds, name)["x"]
        assert torch.equal(x.amin(dim=(1, 2, 3)), torch.full((3,), -1.0))
        assert torch.equal(x.amax(dim=(1, 2, 3)), torch.full((3,), 1.0))
    train = clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=True)
    x = item(train, "u3")["x"]
    assert x.min() >= -1 and x.max() <= 1


def test_ucla_centring_makes_clips_translation_invariant(tmp_path, ucla_ds):
    shifted = {n: ucla_ds.joints(n) + np.float32([5.0, -2.0, 3.0]) for n in ucla_ds.names}
    moved = open_dataset(write_dataset(tmp_path / "moved", shifted, UCLA))  # same names, same draws
    for train in (False, True):
        a = item(clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=train), "u3")["x"]
        b = item(clips(moved, recipe="ucla", window=52, num_person=1, train=train), "u3")["x"]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_ucla_train_clip_matches_upstream_with_the_drawn_angles(ucla_ds):
    ds = clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=True)
    index = ds.names.index("u3")
    rng = ds.rng(index)  # replay the item's draws: 2 angles (deg), scale, frame indices
    agx, agy = np.radians(rng.uniform(-60, 60, size=2))
    s = rng.uniform(0.5, 1.5)
    idx = np.sort(rng.integers(0, 130, size=52))
    expected = upstream_ucla(ucla_ds.joints("u3")[:, 0].astype(np.float64), idx, agx, agy, s)
    np.testing.assert_allclose(ds[index]["x"][..., 0].numpy(), expected, atol=1e-5)
    assert abs(agx) > 0 and abs(agy) > 0


def test_ucla_frame_indices():
    np.testing.assert_array_equal(ucla_frame_indices(130, 52, train=False), np.linspace(0, 129, 52).astype(int))
    np.testing.assert_array_equal(ucla_frame_indices(1, 52, train=False), np.zeros(52, int))
    rng = np.random.default_rng(0)
    idx = ucla_frame_indices(10, 52, train=True, rng=rng)
    assert len(idx) == 52 and np.all(np.diff(idx) >= 0) and idx.min() >= 0 and idx.max() <= 9
    assert len(np.unique(idx)) < 52  # with replacement


def test_ucla_single_frame_and_repeat(ucla_ds):
    ds = clips(ucla_ds, recipe="ucla", window=52, num_person=1, train=True, repeat=5)
    assert len(ds) == 5 * len(ucla_ds.names)
    n = len(ucla_ds.names)
    for i in (0, n, 3 * n + 2):
        it = ds[i]
        assert int(it["index"]) == i % n and int(it["label"]) == int(ucla_ds.labels[i % n])
        assert torch.isfinite(it["x"]).all()
    assert not torch.equal(ds[1]["x"], ds[n + 1]["x"])  # repeats draw their own augmentation
    with pytest.raises(IndexError):
        ds[len(ds)]


# -- items, determinism, errors ------------------------------------------------------------
def test_items_carry_labels_indices_and_features(ntu_ds):
    n = len(ntu_ds.names)
    text = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    rgb = np.ones((n, 6), dtype=np.float16)
    ds = clips(ntu_ds, features={"text": text, "rgb": rgb})
    it = ds[2]
    assert it["label"].dtype == torch.int64 and int(it["label"]) == int(ntu_ds.labels[2])
    assert it["index"].dtype == torch.int64 and int(it["index"]) == 2
    torch.testing.assert_close(it["text"], torch.from_numpy(text[2]))
    assert it["rgb"].dtype == torch.float32 and it["rgb"].shape == (6,)


def test_seeded_determinism_and_worker_independence(ntu_ds):
    a, b = clips(ntu_ds, train=True, seed=3), clips(ntu_ds, train=True, seed=3)
    assert all(torch.equal(a[i]["x"], b[i]["x"]) for i in range(len(a)))
    other = clips(ntu_ds, train=True, seed=4)
    assert not torch.equal(a[5]["x"], other[5]["x"])
    a.set_epoch(1)
    assert not torch.equal(a[5]["x"], b[5]["x"])
    b.set_epoch(1)
    assert torch.equal(a[5]["x"], b[5]["x"])
    # the same batches with 0 or 2 worker processes
    single = torch.cat([batch["x"] for batch in DataLoader(a, batch_size=2)])
    multi = torch.cat([batch["x"] for batch in DataLoader(b, batch_size=2, num_workers=2)])
    assert torch.equal(single, multi)


def test_default_seed_follows_torch_seed(ntu_ds):
    torch.manual_seed(11)
    a = SkeletonClips(ntu_ds, ntu_ds.names, recipe="ntu", train=True, window=64, num_person=2)
    torch.manual_seed(11)
    b = SkeletonClips(ntu_ds, ntu_ds.names, recipe="ntu", train=True, window=64, num_person=2)
    assert a.seed == b.seed == 11 and torch.equal(a[4]["x"], b[4]["x"])


def test_bad_input_errors(ntu_ds):
    with pytest.raises(MMCLError, match="unknown input recipe 'kinetics'.*ntu, ucla"):
        clips(ntu_ds, recipe="kinetics")
    with pytest.raises(MMCLError, match="no sample named 'ghost'"):
        SkeletonClips(ntu_ds, ["ghost"], recipe="ntu", train=True, window=64, num_person=2)
    with pytest.raises(MMCLError, match="features 'text' have 2 rows for 6 samples"):
        clips(ntu_ds, features={"text": np.zeros((2, 4))})
    with pytest.raises(MMCLError, match="clashes"):
        clips(ntu_ds, features={"x": np.zeros((6, 4))})
    with pytest.raises(MMCLError, match="crop_range"):
        clips(ntu_ds, crop_range=(0.0, 1.0))
