"""`mmcl prepare` end to end: the CLI on real NTU files, bad input, atomicity, re-runs, and the
CTR-GCN npz import."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmcl.cli import main
from mmcl.data import ntu, open_dataset
from mmcl.data.prepare import import_ctrgcn_npz, infer_benchmark, prepare_dataset
from mmcl.data.store import read_rejected
from mmcl.errors import MMCLError


def run(*args: str):
    return CliRunner().invoke(main, ["prepare", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def real(shared_data: Path) -> Path:
    return shared_data / "ntu-skeletons"


@pytest.fixture(scope="module")
def reference(shared_data: Path):
    return np.load(shared_data / "ntu-reference" / "ctrgcn_reference_12.npz", allow_pickle=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cli_on_the_real_files(real, reference, tmp_path):
    result = run("ntu60", "--raw", str(real), "--out", str(tmp_path / "ntu60"), "--workers", "2")
    assert result.exit_code == 0, result.output
    for text in ("samples", "12", "xsub: train / test", "5 / 7", "xview: train / test", "7 / 5", "953"):
        assert text in result.output
    assert _leftovers(tmp_path) == ["ntu60"]  # no temporary folder left
    ds = open_dataset(tmp_path / "ntu60")
    assert ds.names == list(reference["names"]) and ds.num_classes == 60
    for i, name in enumerate(ds.names):
        t = int(reference["num_frames"][i])
        joints = ds.joints(name)
        assert joints.dtype == np.float32 and joints.shape == (t, 2, 25, 3)
        np.testing.assert_allclose(joints.reshape(t, 150), reference["data"][i, :t], atol=1e-6, rtol=0)
        assert ds.colors(name).shape == (t, 2, 25, 2)
    info = json.loads((tmp_path / "ntu60" / "dataset.json").read_text())
    assert info["source"]["options"] == {"fix_slot2_span": False, "fix_empty_frame_origin": False}
    assert info["arrays"]["frame_index"]["shape"] == [int(reference["num_frames"].sum())]
    assert read_rejected(tmp_path / "ntu60") == []
    # the same dataset whatever the worker count
    again = run("ntu60", "--raw", str(real), "--out", str(tmp_path / "one"), "--workers", "1")
    assert again.exit_code == 0
    for name in ("joints.npy", "colors.npy", "samples.csv", "splits.json", "frame_index.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "ntu60" / name).read_bytes()


def _copy(real: Path, names: dict[str, str], raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for new, old in names.items():
        shutil.copy(real / f"{old}.skeleton", raw / f"{new}.skeleton")


def test_bad_files_are_rejected_with_reasons_and_the_run_goes_on(real, tmp_path):
    raw = tmp_path / "raw"
    _copy(real, {"S001C001P001R001A001": "S001C001P001R001A001", "S001C001P001R001A050": "S001C001P001R001A050"}, raw)
    good = (real / "S001C001P001R001A011.skeleton").read_bytes()
    lines = good.replace(b"\r\n", b"\n").split(b"\n")
    (raw / "S001C002P001R001A011.skeleton").write_bytes(b"\n".join(lines[:300]))  # truncated
    (raw / "S001C003P001R001A011.skeleton").write_bytes(b"\n".join([b"82", b"2"] + lines[2:]))  # bad count
    (raw / "S001C001P002R001A011.skeleton").write_bytes(b"4\r\n0\r\n0\r\n0\r\n0\r\n")  # all frames empty
    crlf = good.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    (raw / "S001C001P003R001A011.skeleton").write_bytes(crlf)  # CRLF copy of a good file
    (raw / "S001C001P004R001A011.skeleton").write_bytes(good.replace(b"\r\n", b"\n"))  # LF copy
    (raw / "notes.skeleton").write_text("1\n")  # not a sample name
    shutil.copy(real / "S001C001P001R001A011.skeleton", raw / "S001C002P005R002A008.skeleton")  # missing list
    shutil.copy(real / "S001C001P001R001A011.skeleton", raw / "S018C001P008R001A061.skeleton")  # NTU120 only

    result = run("ntu60", "--raw", str(raw), "--out", str(tmp_path / "ds"), "--workers", "2")
    assert result.exit_code == 0, result.output
    assert re.search(r"skipped: on the official missing-skeleton list +1\n", result.output)
    assert re.search(r"skipped: not part of ntu60 \(setup > 17 or action > 60\) +1\n", result.output)
    assert "rejected (see rejected.csv)" in result.output and "rejected.csv" in result.output
    rejected = {row["name"]: row for row in read_rejected(tmp_path / "ds")}
    assert set(rejected) == {"S001C002P001R001A011", "S001C003P001R001A011", "S001C001P002R001A011", "notes"}
    assert "line 300" in rejected["S001C002P001R001A011"]["reason"]  # truncated mid-body
    assert "line 30: expected the 10 fields of body 2" in rejected["S001C003P001R001A011"]["reason"]
    assert "holds 0 bodies in all 4 frames" in rejected["S001C001P002R001A011"]["reason"]
    assert "not an NTU RGB+D sample name" in rejected["notes"]["reason"]
    assert rejected["S001C001P002R001A011"]["file"] == "S001C001P002R001A011.skeleton"
    ds = open_dataset(tmp_path / "ds")
    assert ds.names == ["S001C001P001R001A001", "S001C001P001R001A050", "S001C001P003R001A011", "S001C001P004R001A011"]
    np.testing.assert_array_equal(ds.joints("S001C001P003R001A011"), ds.joints("S001C001P004R001A011"))
    np.testing.assert_array_equal(ds.colors("S001C001P003R001A011"), ds.colors("S001C001P004R001A011"))
    assert ds.info_of("S001C001P001R001A050").meta["body_ids"] == 2


def test_overwrite(real, tmp_path):
    out = tmp_path / "ds"
    assert run("ntu60", "--raw", str(real), "--out", str(out), "--workers", "1").exit_code == 0
    before = (out / "dataset.json").read_text()
    refused = run("ntu60", "--raw", str(real), "--out", str(out))
    assert refused.exit_code == 1 and "already exists; pass --overwrite" in refused.output
    assert (out / "dataset.json").read_text() == before
    redo = run("ntu120", "--raw", str(real), "--out", str(out), "--overwrite", "--workers", "2")
    assert redo.exit_code == 0, redo.output
    assert open_dataset(out).num_classes == 120 and sorted(open_dataset(out).splits) == ["xset", "xsub"]
    assert _leftovers(tmp_path) == ["ds"]


@dataclass(frozen=True)
class Interrupted(ntu.Ntu60Source):
    """Raises after two samples, as a Ctrl-C or a crash would."""

    def read(self, path: Path):
        if path.name > "S001C003":
            raise KeyboardInterrupt
        return super().read(path)


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_run_leaves_nothing_behind(real, tmp_path, existing):
    out = tmp_path / "deep" / "ds"
    if existing:
        assert run("ntu60", "--raw", str(real), "--out", str(out)).exit_code == 0
        before = (out / "joints.npy").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(Interrupted(), real, out, overwrite=True, progress=False)
    if existing:  # the old dataset is untouched
        assert (out / "joints.npy").read_bytes() == before and _leftovers(out.parent) == ["ds"]
    else:  # not even the parent folders it created
        assert _leftovers(tmp_path) == []


@dataclass(frozen=True)
class WorkerKilled(ntu.Ntu60Source):
    """The worker reading the fifth file dies at once, as one killed by the OOM killer would."""

    def read(self, path: Path):
        if path.name.startswith("S002"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().read(path)


def test_a_killed_worker_ends_the_run_with_a_clear_error(real, tmp_path):
    with pytest.raises(MMCLError, match="worker process died.*nothing was written"):
        prepare_dataset(WorkerKilled(), real, tmp_path / "ds", workers=2, progress=False)
    assert _leftovers(tmp_path) == []


def test_an_error_in_the_extras_step_with_workers_leaves_nothing(real, tmp_path):
    def extras(folder: Path):
        assert (folder / "dataset.json").is_file()  # the dataset is complete when extras run
        raise RuntimeError("strip builder failed")

    with pytest.raises(RuntimeError, match="strip builder failed"):
        prepare_dataset(ntu.Ntu60Source(), real, tmp_path / "ds", workers=2, extras=extras, progress=False)
    assert _leftovers(tmp_path) == []


def test_extras_rejections_are_listed(real, tmp_path):
    def extras(folder: Path):
        return [("S001C001P001R001A001", "rgb: missing video")]

    summary = prepare_dataset(ntu.Ntu60Source(), real, tmp_path / "ds", extras=extras, progress=False)
    assert summary.extra_rejected == 1 and summary.samples == 12
    assert read_rejected(tmp_path / "ds") == [{"name": "S001C001P001R001A001", "file": "", "reason": "rgb: missing video"}]


def test_bad_dataset_and_folders(tmp_path):
    result = CliRunner().invoke(main, ["prepare", "kinetics", "--raw", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'kinetics' is not one of" in result.output
    (tmp_path / "empty").mkdir()
    result = run("ntu60", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "holds no NTU RGB+D .skeleton files (it is empty)" in result.output
    result = run("ntu120", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "does not exist" in result.output
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "a01_s01_e01_v01.json").write_text("{}")
    result = run("ntu60", "--raw", str(tmp_path / "json"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "a01_s01_e01_v01.json" in result.output
    result = run("ntu60", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "needs --raw DIR" in result.output
    result = run("ucla", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--fix-slot2-span")
    assert result.exit_code == 2 and "ntu60/ntu120 only" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "json"]


def test_all_skipped_or_all_rejected_is_an_error(real, tmp_path):
    raw = tmp_path / "raw"
    _copy(real, {"S001C002P005R002A008": "S001C001P001R001A001"}, raw)
    result = run("ntu60", "--raw", str(raw), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "all 1 ntu60 files are skipped" in result.output
    (raw / "S001C001P001R001A001.skeleton").write_text("2\n0\n0\n")
    result = run("ntu60", "--raw", str(raw), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "all 1 files were rejected" in result.output
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == ["raw"]


def test_help_teaches():
    result = run("--help")
    assert result.exit_code == 0
    for text in ("Examples:", "mmcl prepare synthetic", "--from-ctrgcn-npz", "--fix-slot2-span", "--workers"):
        assert text in result.output


def _write_ctrgcn_npz(path: Path, reference) -> list[str]:
    """An NTU60_CS.npz as CTR-GCN writes it, from the reference rows; returns the row names."""
    names = [str(n) for n in reference["names"]]
    train, test = reference["cs_train_idx"], reference["cs_test_idx"]
    one_hot = np.eye(60)[reference["labels"]]
    np.savez(path, x_train=reference["data"][train], y_train=one_hot[train], x_test=reference["data"][test], y_test=one_hot[test])
    return [names[i] for i in train] + [names[i] for i in test]


def test_ctrgcn_npz_round_trip(reference, tmp_path):
    npz = tmp_path / "NTU60_CS.npz"
    rows = _write_ctrgcn_npz(npz, reference)
    (tmp_path / "names.txt").write_text("\n".join(rows) + "\n")
    result = run("ntu60", "--from-ctrgcn-npz", str(npz), "--names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "ds"))
    assert result.exit_code == 0, result.output
    ds = open_dataset(tmp_path / "ds")
    names = [str(n) for n in reference["names"]]
    assert ds.splits["xsub"]["train"] == [names[i] for i in reference["cs_train_idx"]]
    assert ds.splits["xview"]["test"] == [names[i] for i in reference["cv_test_idx"]]
    for i, name in enumerate(names):
        t = int(reference["num_frames"][i])
        np.testing.assert_array_equal(ds.joints(name).reshape(t, 150), reference["data"][i, :t])
        assert ds.labels[ds.names.index(name)] == reference["labels"][i]
    assert ds.colors(names[0]) is None
    # without names: placeholders, the file's own benchmark only
    summary = import_ctrgcn_npz(npz, tmp_path / "anon", "ntu60", progress=False)
    anon = open_dataset(tmp_path / "anon")
    assert summary.samples == 12 and list(anon.splits) == ["xsub"]
    assert anon.splits["xsub"]["test"][0] == "ctrgcn-test-000000"
    first_test = names[reference["cs_test_idx"][0]]
    np.testing.assert_array_equal(anon.joints("ctrgcn-test-000000"), ds.joints(first_test))
    assert "placeholders" in json.loads((tmp_path / "anon" / "dataset.json").read_text())["source"]["names"]


def test_ctrgcn_npz_errors(reference, tmp_path):
    npz = tmp_path / "NTU60_CS.npz"
    rows = _write_ctrgcn_npz(npz, reference)
    swapped = rows[:]
    swapped[0], swapped[-1] = swapped[-1], swapped[0]
    (tmp_path / "swapped.txt").write_text("\n".join(swapped))
    with pytest.raises(MMCLError, match="has label"):
        import_ctrgcn_npz(npz, tmp_path / "o", "ntu60", tmp_path / "swapped.txt", progress=False)
    (tmp_path / "short.txt").write_text("\n".join(rows[:5]))
    with pytest.raises(MMCLError, match="lists 5 names; the npz has 5 train \\+ 7 test"):
        import_ctrgcn_npz(npz, tmp_path / "o", "ntu60", tmp_path / "short.txt", progress=False)
    np.savez(tmp_path / "data.npz", x_train=np.zeros((1, 3, 150), np.float32))
    with pytest.raises(MMCLError, match="cannot tell the benchmark"):
        import_ctrgcn_npz(tmp_path / "data.npz", tmp_path / "o", "ntu60", progress=False)
    with pytest.raises(MMCLError, match="no array 'x_test'.*this one holds \\['x_train'\\]"):
        import_ctrgcn_npz(tmp_path / "data.npz", tmp_path / "o", "ntu60", benchmark="xsub", progress=False)
    np.savez(tmp_path / "obj_CS.npz", x_train=np.array([None], dtype=object))
    with pytest.raises(MMCLError, match="holds Python objects"):
        import_ctrgcn_npz(tmp_path / "obj_CS.npz", tmp_path / "o", "ntu60", progress=False)
    assert not (tmp_path / "o").exists()
    assert [infer_benchmark(n) for n in ("NTU60_CS.npz", "NTU60_CV.npz", "NTU120_CSub.npz", "NTU120_CSet.npz")] == [
        "xsub", "xview", "xsub", "xset"
    ]


def test_a_missing_dataset_module_is_a_clean_error():
    import click

    from mmcl.cli.prepare import _lookup

    with pytest.raises(click.ClickException, match="`mmcl prepare kinetics` is not available in this build"):
        _lookup("mmcl.data.kinetics", "KineticsSource", "kinetics")
    with pytest.raises(click.ClickException, match="mmcl.data.ntu.NoSuchSource is missing"):
        _lookup("mmcl.data.ntu", "NoSuchSource", "ntu60")
