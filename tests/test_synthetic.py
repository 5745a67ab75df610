"""The built-in synthetic set: raw .skeleton files, then the NTU preparation on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcl.data import open_dataset
from mmcl.data.naming import parse_ntu_name
from mmcl.data.ntu import parse_skeleton
from mmcl.data.synthetic import (
    ACTIONS,
    CLASS_NAMES,
    COLOR_SIZE,
    SyntheticSource,
    prepare_synthetic,
    sample_name,
    write_synthetic_raw,
)
from mmcl.errors import MMCLError

TWO_ACTOR = [i for i, spec in enumerate(ACTIONS) if spec.actors == 2]


def _contents(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = _contents(write_synthetic_raw(tmp_path / "a", seed=3, samples_per_class=2))
    again = _contents(write_synthetic_raw(tmp_path / "b", seed=3, samples_per_class=2, workers=2))
    assert first == again and len(first) == 2 * len(CLASS_NAMES)
    other = _contents(write_synthetic_raw(tmp_path / "c", seed=4, samples_per_class=2))
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first)  # every recording changes with the seed
    # A sample depends only on (seed, class, index), not on how many are generated.
    fewer = _contents(write_synthetic_raw(tmp_path / "d", seed=3, samples_per_class=1))
    assert all(fewer[k] == first[k] for k in fewer)


def test_names_vary_performer_camera_setup_replication() -> None:
    names = [sample_name(a, i) for a in range(len(CLASS_NAMES)) for i in range(48)]
    assert len(set(names)) == len(names)
    fields = [parse_ntu_name(n) for n in names]
    assert {f["subject"] for f in fields} == set(range(1, 9))
    assert {f["camera"] for f in fields} == {1, 2, 3}
    assert {f["replication"] for f in fields} == {1, 2}
    assert len({f["setup"] for f in fields}) >= 4
    per_class = [parse_ntu_name(sample_name(0, i))["subject"] for i in range(32)]
    assert all(per_class.count(p) == 4 for p in range(1, 9))  # balanced for the xsub split


def test_raw_files_are_kinect_v2_skeletons(tmp_path: Path) -> None:
    paths = write_synthetic_raw(tmp_path, seed=0, samples_per_class=2)
    assert len(CLASS_NAMES) >= 10 and TWO_ACTOR and len(TWO_ACTOR) < len(CLASS_NAMES)
    endings = set()
    for path in paths:
        data = path.read_bytes()
        endings.add(b"\r\n" in data)
        raw = parse_skeleton(data, path.name)  # the NTU parser accepts every file
        assert raw.num_frames >= 40 - 3 and raw.declared_frames <= 100
        assert raw.joints.shape[1:] == (25, 3) and np.isfinite(raw.joints).all()
        assert 1.0 < raw.joints[..., 2].min() and raw.joints[..., 2].max() < 8.0  # metres in front
        colors = raw.colors
        assert (colors[..., 0] > 0).all() and (colors[..., 0] < COLOR_SIZE[0]).all()
        assert (colors[..., 1] > 0).all() and (colors[..., 1] < COLOR_SIZE[1]).all()
        # colour pixels follow the camera-space joints (a perspective projection)
        ratio = raw.joints[..., 0] / raw.joints[..., 2]
        assert np.corrcoef(ratio.ravel(), colors[..., 0].ravel())[0, 1] > 0.999
    assert endings == {True, False}  # both CRLF and LF files, as in the real set


def test_one_and_two_actor_classes_after_denoising(tmp_path: Path) -> None:
    source = SyntheticSource()
    for path in write_synthetic_raw(tmp_path, seed=1, samples_per_class=3):
        sample = source.read(path)
        expected = 2 if sample.label in TWO_ACTOR else 1
        assert sample.bodies == expected, path.name
        assert sample.joints.shape[1:] == (2, 25, 3) and sample.colors.shape[1:] == (2, 25, 2)
        if expected == 1:
            assert not sample.joints[:, 1].any()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "synth"
    prepare_synthetic(out, seed=0, samples_per_class=8, workers=2)
    return out


def test_prepare_synthetic_builds_an_ntu_layout_dataset(prepared: Path) -> None:
    ds = open_dataset(prepared)
    assert ds.name == "synthetic" and ds.class_names == list(CLASS_NAMES)
    assert len(ds) == 8 * len(CLASS_NAMES)
    assert ds.layout.num_joints == 25 and ds.num_person == 2 and ds.has_colors
    assert not [p for p in prepared.parent.iterdir() if p.name.startswith(".")]  # temporary raw folder gone
    xsub, xview = ds.splits["xsub"], ds.splits["xview"]
    for split in (xsub, xview):
        assert sorted(split["train"] + split["test"]) == sorted(ds.names)
    assert {ds.info_of(n).meta["subject"] for n in xsub["train"]} == {1, 2, 3, 4}
    assert {ds.info_of(n).meta["subject"] for n in xsub["test"]} == {5, 6, 7, 8}
    assert {ds.info_of(n).meta["camera"] for n in xview["test"]} == {1}
    for name in ds.names[::7]:
        joints, colors = ds.joints(name), ds.colors(name)
        assert joints.dtype == np.float32 and colors.shape == joints.shape[:-1] + (2,)
        first = np.flatnonzero(np.abs(joints[:, 0]).sum((1, 2)) > 0)[0]
        np.testing.assert_allclose(joints[first, 0, 1], 0.0, atol=1e-6)  # centred on spine-mid
        present = np.abs(joints).sum(-1) > 0
        inside = (colors[..., 0] > 0) & (colors[..., 0] < 1920) & (colors[..., 1] > 0) & (colors[..., 1] < 1080)
        assert inside[present].all()
    with pytest.raises(MMCLError, match="already exists"):
        prepare_synthetic(prepared, seed=0, samples_per_class=1)


def _features(joints: np.ndarray) -> np.ndarray:
    """Simple view-robust descriptors: distances between key joints and heights above the feet,
    their spread over time and their mean over each third of the clip; plus actor count and the
    gap between actors."""
    key = [0, 3, 7, 11, 15, 19, 20]
    a = joints[:, 0]
    dist = [np.linalg.norm(a[:, i] - a[:, j], axis=-1) for n, i in enumerate(key) for j in key[n + 1 :]]
    height = a[:, key, 1] - a[:, [15, 19], 1].min(1, keepdims=True)
    f = np.concatenate([np.stack(dist, 1), height], 1)
    thirds = np.array_split(f, 3)
    two = bool(joints[:, 1].any())
    gap = np.linalg.norm(joints[:, 0, 0] - joints[:, 1, 0], axis=-1) if two else np.zeros(len(f))
    return np.concatenate([f.std(0), f.max(0), f.min(0), *[t.mean(0) for t in thirds], [4.0 * two, gap.mean(), gap[0] - gap[-1]]])


def test_classes_are_separable_across_performers(prepared: Path) -> None:
    """A nearest-centroid classifier on hand-made features, trained on performers 1-4, names the
    action of performers 5-8 far above chance: the classes differ in their motion."""
    ds = open_dataset(prepared)
    train, test = ds.splits["xsub"]["train"], ds.splits["xsub"]["test"]
    x_train = np.stack([_features(ds.joints(n)) for n in train])
    x_test = np.stack([_features(ds.joints(n)) for n in test])
    y_train = np.array([ds.info_of(n).label for n in train])
    y_test = np.array([ds.info_of(n).label for n in test])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    z_train, z_test = (x_train - mu) / sd, (x_test - mu) / sd
    centroids = np.stack([z_train[y_train == c].mean(0) for c in range(len(CLASS_NAMES))])
    pred = np.argmin(((z_test[:, None] - centroids[None]) ** 2).sum(-1), 1)
    accuracy = float((pred == y_test).mean())
    assert accuracy > 0.6, f"nearest-centroid accuracy {accuracy:.2f} (chance {1 / len(CLASS_NAMES):.2f})"
