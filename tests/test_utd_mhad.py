"""UTD-MHAD source, on the complete real set (../shared/data/utd-mhad) and on broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from mmcl.data.sources import SampleError
from mmcl.data.splits import split_names
from mmcl.data.utd_mhad import CLASS_NAMES, UtdMhadSource, parse_utd_name
from mmcl.errors import MMCLError


@pytest.fixture(scope="module")
def utd(shared_data: Path) -> Path:
    return shared_data / "utd-mhad"


def test_reads_d_skel_as_time_person_joint_coord(utd: Path) -> None:
    source = UtdMhadSource()
    path = utd / "a27_s8_t3_skeleton.mat"
    sample = source.read(path)
    raw = loadmat(path)["d_skel"]  # (20, 3, T) float64
    assert sample.name == "a27_s8_t3" and source.sample_name(path) == "a27_s8_t3"
    assert sample.label == 26 and CLASS_NAMES[26] == "squat (two arms stretch out)"
    assert sample.joints.dtype == np.float32 and sample.joints.shape == (raw.shape[2], 1, 20, 3)
    np.testing.assert_array_equal(sample.joints[:, 0], raw.transpose(2, 0, 1).astype(np.float32))
    assert sample.colors is None and sample.meta == {"action": 27, "subject": 8, "trial": 3}


def test_discover_and_xsub_split_on_the_full_set(utd: Path) -> None:
    source = UtdMhadSource()
    files = source.discover(utd)
    names = [source.sample_name(p) for p in files]
    assert len(names) == 861 and len(set(names)) == 861
    assert names[:2] == ["a1_s1_t1", "a1_s1_t2"] and names[-1] == "a27_s8_t3"  # natural order
    assert not {"a8_s1_t4", "a23_s6_t4", "a27_s8_t4"} & set(names)  # never recorded
    splits = source.splits(names)
    train, test = splits["xsub"]["train"], splits["xsub"]["test"]
    assert (len(train), len(test)) == (431, 430)
    assert {parse_utd_name(n)["subject"] for n in train} == {1, 3, 5, 7}
    assert {parse_utd_name(n)["subject"] for n in test} == {2, 4, 6, 8}
    assert [parse_utd_name(n)["subject"] for n in train][:1] == [1]  # grouped by subject
    assert len(CLASS_NAMES) == 27 and {parse_utd_name(n)["action"] for n in names} == set(range(1, 28))
    assert split_names("utd-mhad", "xsub", names) == (train, test)
    with pytest.raises(MMCLError, match="unknown benchmark 'xview'"):
        split_names("utd-mhad", "xview", names)


def test_discover_errors_and_skeleton_subfolder(tmp_path: Path, utd: Path) -> None:
    source = UtdMhadSource()
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(MMCLError, match="UTD-MHAD"):
            source.discover(bad)
    (tmp_path / "Skeleton").mkdir()
    shutil.copy(utd / "a1_s1_t1_skeleton.mat", tmp_path / "Skeleton")
    assert [p.name for p in source.discover(tmp_path)] == ["a1_s1_t1_skeleton.mat"]


def test_bad_files_raise_sample_error(tmp_path: Path) -> None:
    source = UtdMhadSource()
    cases = {
        "a1_s1_t1_skeleton.mat": (b"MATLAB 5.0 MAT-file, truncated", "not a readable MATLAB 5 file"),
        "a2_s1_t1_skeleton.mat": ({"skel": np.zeros((20, 3, 4))}, "no variable 'd_skel'"),
        "a3_s1_t1_skeleton.mat": ({"d_skel": np.zeros((25, 3, 4))}, r"shape \(25, 3, 4\)"),
        "a4_s1_t1_skeleton.mat": ({"d_skel": np.zeros((20, 3, 0))}, "0 frames"),
        "a5_s1_t1_skeleton.mat": ({"d_skel": np.full((20, 3, 4), np.nan)}, "frame 0 holds a non-finite"),
        "a28_s1_t1_skeleton.mat": ({"d_skel": np.zeros((20, 3, 4))}, r"action a28 outside 1\.\.27"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            savemat(path, content)
        with pytest.raises(SampleError, match=reason) as err:
            source.read(path)
        assert name in str(err.value)


def test_prepare_the_full_set(utd: Path, tmp_path: Path) -> None:
    from mmcl.data import open_dataset
    from mmcl.data.prepare import prepare_dataset

    summary = prepare_dataset(UtdMhadSource(), utd, tmp_path / "utd", workers=2, progress=False)
    assert (summary.samples, summary.rejected, summary.frames) == (861, 0, 58299)
    assert summary.splits == {"xsub": {"train": 431, "test": 430}}
    ds = open_dataset(tmp_path / "utd")
    assert ds.name == "utd-mhad" and len(ds.class_names) == 27 and ds.num_person == 1
    assert sorted(set(ds.labels.tolist())) == list(range(27))
    assert not ds.has_colors
    frames = [ds.info_of(n).frames for n in ds.names]
    assert min(frames) == 41 and max(frames) == 125
    for name in ("a1_s1_t1", "a14_s6_t2", "a27_s8_t3"):
        raw = loadmat(utd / f"{name}_skeleton.mat")["d_skel"]
        joints = ds.joints(name)
        assert joints.shape == (raw.shape[2], 1, 20, 3)
        np.testing.assert_array_equal(joints[:, 0], raw.transpose(2, 0, 1).astype(np.float32))


def test_prepare_lists_bad_files_and_goes_on(utd: Path, tmp_path: Path) -> None:
    from mmcl.data import open_dataset
    from mmcl.data.prepare import prepare_dataset
    from mmcl.data.store import read_rejected

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a1_s1_t1", "a1_s2_t1", "a2_s3_t1"):
        shutil.copy(utd / f"{name}_skeleton.mat", raw)
    data = (utd / "a2_s4_t1_skeleton.mat").read_bytes()
    (raw / "a2_s4_t1_skeleton.mat").write_bytes(data[: len(data) // 2])  # truncated
    summary = prepare_dataset(UtdMhadSource(), raw, tmp_path / "out", workers=1, progress=False)
    assert (summary.samples, summary.rejected) == (3, 1)
    rejected = read_rejected(tmp_path / "out")
    assert [r["name"] for r in rejected] == ["a2_s4_t1"] and "a2_s4_t1_skeleton.mat" in rejected[0]["reason"]
    assert open_dataset(tmp_path / "out").splits["xsub"] == {"train": ["a1_s1_t1", "a2_s3_t1"], "test": ["a1_s2_t1"]}
