"""NW-UCLA source: CTR-GCN's all_sqe/ JSON files, written here in that format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmcl.data.sources import SampleError
from mmcl.data.splits import split_names
from mmcl.data.ucla import ACTION_TO_LABEL, CLASS_NAMES, UclaSource, parse_ucla_name
from mmcl.errors import MMCLError
from mmcl.graphs import UCLA


def write_sample(folder: Path, action: int, subject: int, env: int, view: int, frames: int, seed: int = 0, **override) -> Path:
    """One file in CTR-GCN's format; ``override`` replaces any top-level key."""
    name = f"a{action:02d}_s{subject:02d}_e{env:02d}_v{view:02d}"
    rng = np.random.default_rng(seed)
    data = {
        "file_name": name,
        "skeletons": rng.normal(0, 0.5, (frames, 20, 3)).round(6).tolist(),
        "label": ACTION_TO_LABEL[action],
    }
    data.update(override)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def all_sqe(tmp_path: Path) -> Path:
    folder = tmp_path / "NW-UCLA" / "all_sqe"
    folder.mkdir(parents=True)
    seed = 0
    for action in (1, 4, 8, 12):
        for view in (3, 1, 2):
            for subject in (1, 2):
                seed += 1
                write_sample(folder, action, subject, subject - 1, view, frames=5 + seed, seed=seed)
    return folder


def test_reads_ctrgcn_json_as_is(all_sqe: Path) -> None:
    source = UclaSource()
    path = all_sqe / "a08_s02_e01_v03.json"
    sample = source.read(path)
    data = json.loads(path.read_text())
    assert sample.name == "a08_s02_e01_v03"
    assert sample.label == 6 and CLASS_NAMES[sample.label] == "donning"  # a08 is the 7th action
    assert sample.joints.dtype == np.float32
    assert sample.joints.shape == (len(data["skeletons"]), 1, UCLA.num_joints, 3)
    np.testing.assert_array_equal(sample.joints[:, 0], np.asarray(data["skeletons"], np.float32))  # not centred
    assert sample.colors is None and sample.bodies == 1
    assert sample.meta == {"action": 8, "subject": 2, "environment": 1, "view": 3}


def test_label_order_and_action_numbers() -> None:
    assert len(CLASS_NAMES) == 10
    assert [ACTION_TO_LABEL[a] for a in (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)] == list(range(1, 11))
    assert CLASS_NAMES[0] == "pick up with one hand" and CLASS_NAMES[9] == "carry"
    assert parse_ucla_name("a11_s03_e02_v01.json") == {"action": 11, "subject": 3, "environment": 2, "view": 1}
    with pytest.raises(MMCLError, match="aAA_sSS_eEE_vVV"):
        parse_ucla_name("S001C001P001R001A001")


def test_discover_accepts_all_sqe_or_its_parent(all_sqe: Path, tmp_path: Path) -> None:
    source = UclaSource()
    files = source.discover(all_sqe)
    assert files == source.discover(all_sqe.parent) and len(files) == 24
    assert [p.name for p in files] == sorted(p.name for p in files)
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(MMCLError, match="NW-UCLA"):
            source.discover(bad)
    other = tmp_path / "other"
    other.mkdir()
    (other / "S001C001P001R001A001.skeleton").write_text("1\n0\n")
    (other / "config.json").write_text("{}")
    with pytest.raises(MMCLError, match="aAA_sSS_eEE_vVV.json"):
        source.discover(other)


def test_xview_split_views_1_2_train_view_3_test(all_sqe: Path) -> None:
    source = UclaSource()
    names = [source.sample_name(p) for p in source.discover(all_sqe)]
    splits = source.splits(names)
    assert list(splits) == ["xview"]
    train, test = splits["xview"]["train"], splits["xview"]["test"]
    assert len(train) == 16 and len(test) == 8 and not set(train) & set(test)
    assert [parse_ucla_name(n)["view"] for n in train] == [1] * 8 + [2] * 8  # view 1 first, then 2
    assert {parse_ucla_name(n)["view"] for n in test} == {3}
    assert split_names("ucla", "xview", names) == (train, test)
    with pytest.raises(MMCLError, match="unknown benchmark 'xsub' for 'ucla'"):
        split_names("ucla", "xsub", names)
    with pytest.raises(MMCLError, match="view 4"):  # never dropped silently
        split_names("ucla", "xview", [*names, "a01_s01_e00_v04"])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "malformed JSON"),
        ('{"file_name": "a01_s01_e00_v01", "label": 1}', "missing key 'skeletons'"),
        ('{"file_name": "a01_s01_e00_v01", "skeletons": [], "label": 1}', "0 frames"),
        ('{"file_name": "a01_s01_e00_v01", "skeletons": [[[0, 0, 0]]], "label": 1}', "frame 0 has 1 joints, expected 20"),
        ('{"file_name": "a01_s01_e00_v01", "skeletons": "x", "label": 1}', "must be a list of frames"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_files_raise_sample_error_with_reason(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "a01_s01_e00_v01.json"
    path.write_text(content)
    with pytest.raises(SampleError, match=reason) as err:
        UclaSource().read(path)
    assert "a01_s01_e00_v01.json" in str(err.value)


def test_label_and_name_mismatches(tmp_path: Path) -> None:
    source = UclaSource()
    with pytest.raises(SampleError, match=r"label 5 does not match.*a08 is label 7 \(donning\)"):
        source.read(write_sample(tmp_path, 8, 1, 0, 1, frames=3, label=5))
    with pytest.raises(SampleError, match="file_name says 'a02_s01_e00_v01'"):
        source.read(write_sample(tmp_path, 1, 1, 0, 2, frames=3, file_name="a02_s01_e00_v01"))
    bad_frame = write_sample(tmp_path, 1, 1, 0, 3, frames=4)
    data = json.loads(bad_frame.read_text())
    data["skeletons"][2] = data["skeletons"][2][:19]
    bad_frame.write_text(json.dumps(data))
    with pytest.raises(SampleError, match="frame 2 has 19 joints"):
        source.read(bad_frame)
    nan = write_sample(tmp_path, 1, 2, 0, 3, frames=4)
    data = json.loads(nan.read_text())
    data["skeletons"][1][3][0] = float("nan")
    nan.write_text(json.dumps(data))
    with pytest.raises(SampleError, match="frame 1 holds a non-finite"):
        source.read(nan)
    (tmp_path / "a07_s01_e00_v01.json").write_text("{}")
    with pytest.raises(SampleError, match="a07 is not an NW-UCLA action"):
        source.read(tmp_path / "a07_s01_e00_v01.json")
    (tmp_path / "walk.json").write_text("{}")
    with pytest.raises(SampleError, match="not an NW-UCLA sample name"):
        source.read(tmp_path / "walk.json")


def test_prepare_end_to_end_with_rejections(all_sqe: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mmcl.cli import main
    from mmcl.data import open_dataset
    from mmcl.data.store import read_rejected

    (all_sqe / "a02_s05_e00_v01.json").write_text('{"file_name": "a02_s05_e00_v01", "skeletons": [[[0, 0')
    write_sample(all_sqe, 3, 5, 0, 2, frames=4, label=9)
    out = tmp_path / "data" / "ucla"
    result = CliRunner().invoke(main, ["prepare", "ucla", "--raw", str(all_sqe.parent), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "xview: train / test" in result.output and "16 / 8" in result.output

    ds = open_dataset(out)
    assert ds.name == "ucla" and ds.class_names == list(CLASS_NAMES)
    assert len(ds) == 24 and ds.num_person == 1 and ds.layout.joint_names == UCLA.joint_names
    assert ds.colors(ds.names[0]) is None
    for name in ds.names:
        data = json.loads((all_sqe / f"{name}.json").read_text())
        np.testing.assert_array_equal(ds.joints(name)[:, 0], np.asarray(data["skeletons"], np.float32))
        assert ds.info_of(name).label == data["label"] - 1
        assert ds.info_of(name).meta == parse_ucla_name(name)
    rejected = {row["name"]: row["reason"] for row in read_rejected(out)}
    assert set(rejected) == {"a02_s05_e00_v01", "a03_s05_e00_v02"}
    assert "malformed JSON" in rejected["a02_s05_e00_v01"]
    assert "label 9 does not match" in rejected["a03_s05_e00_v02"]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["prepare", "ucla", "--raw", str(empty), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "no NW-UCLA files" in result.output
    assert not (tmp_path / "x").exists()
