"""The score-file contract (DESIGN.md, "Score files"): save_scores / load_scores."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmcl import __version__
from mmcl.errors import MMCLError
from mmcl.scores import load_scores, save_scores

NAMES = ["S001C001P001R001A001", "S001C001P001R001A002", "S002C003P004R002A010"]


def _scores(n: int = 3, k: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    scores = _scores()
    labels = np.array([0, 1, -1])
    meta = {"dataset": "ntu120", "benchmark": "xsub", "stream": "joint", "class_names": [f"c{i}" for i in range(12)]}
    path = tmp_path / "scores.npz"
    save_scores(path, NAMES, scores, labels, meta)

    sf = load_scores(path)
    assert list(sf.names) == NAMES
    assert sf.scores.dtype == np.float32 and np.array_equal(sf.scores, scores)
    assert sf.labels.dtype == np.int64 and sf.labels.tolist() == [0, 1, -1]
    assert sf.meta["stream"] == "joint" and sf.meta["class_names"][11] == "c11"
    assert sf.meta["mmcl_version"] == __version__
    assert sf.num_classes == 12 and len(sf) == 3
    sf.scores[0, 0] = 5.0  # a plain, writeable array, not a view of the file

    # the file itself follows the contract: plain arrays, no pickle needed
    with np.load(path, allow_pickle=False) as raw:
        assert raw["names"].dtype.kind == "U" and raw["scores"].dtype == np.float32
        assert raw["labels"].dtype == np.int64
        assert json.loads(str(raw["meta"]))["benchmark"] == "xsub"


def test_unknown_labels_and_float64_scores(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    save_scores(path, NAMES, _scores().astype(np.float64), None, {})
    sf = load_scores(path)
    assert sf.labels.tolist() == [-1, -1, -1]
    assert sf.scores.dtype == np.float32


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scores.npz"
    save_scores(path, NAMES, _scores(seed=1), None, {"stream": "old"})
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o044, f"score file should be readable by others under a normal umask, mode {oct(mode)}"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_scores(path, NAMES, _scores(seed=2), None, {"stream": "new"})
    monkeypatch.undo()
    assert load_scores(path).meta["stream"] == "old"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz"]


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        (np.zeros((2, 4), np.float32), None, r"N = 3"),
        (np.zeros((3, 4), np.int32), None, "floating point"),
        (np.zeros((3, 4), np.float32), np.array([0, 1]), "labels must be an integer array"),
    ],
)
def test_save_rejects_bad_arrays(tmp_path: Path, scores, labels, match) -> None:
    with pytest.raises(MMCLError, match=match):
        save_scores(tmp_path / "x.npz", NAMES, scores, labels, {})
    assert not list(tmp_path.iterdir())


def _raw_npz(path: Path, **arrays) -> Path:
    base = {
        "names": np.array(NAMES),
        "scores": _scores(),
        "labels": np.array([0, 1, 2], np.int64),
        "meta": np.array(json.dumps({"stream": "j"})),
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"labels": None}, r"missing key\(s\) \['labels'\]"),
        ({"meta": np.array("{not json")}, "'meta' is not a JSON string"),
        ({"meta": np.array("[1, 2]")}, "must be a JSON object"),
        ({"labels": np.array([0, 1], np.int64)}, "'labels' must be an integer array"),
        ({"labels": np.array([0, 1, -2], np.int64)}, "S002C003P004R002A010.*label -2"),
        ({"labels": np.array([0, 1, 12], np.int64)}, "S002C003P004R002A010.*label 12.*only 12 classes"),
        ({"scores": np.zeros((3,), np.float32)}, "'scores' must be"),
        ({"scores": np.zeros((3, 4), np.int64)}, "float32 logits"),
        ({"names": np.array([1, 2, 3])}, "'names' must be a 1-D string array"),
        ({"names": np.array([{"a": 1}, 2, 3], dtype=object)}, "cannot be read without pickle"),
    ],
)
def test_load_errors_name_the_file_and_key(tmp_path: Path, arrays, match) -> None:
    path = _raw_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MMCLError, match=match) as info:
        load_scores(path)
    assert "bad.npz" in str(info.value)


def test_load_errors_for_missing_unreadable_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(MMCLError, match="no such score file"):
        load_scores(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(MMCLError, match="not a readable .npz"):
        load_scores(tmp_path / "text.npz")
    good = tmp_path / "good.npz"
    save_scores(good, NAMES, _scores(k=2000), None, {})
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MMCLError, match="cut.npz"):
        load_scores(cut)


def test_compressed_and_big_endian_files_load_through_the_general_path(tmp_path: Path) -> None:
    scores = _scores(k=7)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, names=np.array(NAMES), scores=scores.astype(">f4"),
                        labels=np.array([0, 1, 2]), meta=np.array("{}"))
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("scores.npy").compress_type == zipfile.ZIP_DEFLATED
    sf = load_scores(path)
    assert sf.scores.dtype == np.float32 and np.array_equal(sf.scores, scores)
