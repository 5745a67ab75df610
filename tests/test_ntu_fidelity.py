"""mmcl's NTU preparation against the output of CTR-GCN's own scripts (../shared/data/ntu-reference):
the 12 real files and 10 constructed edge cases, joints to 1e-6 frame for frame, the denoised
arrays before centring, the split orders, and colour coordinates aligned with the joints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmcl.data import ntu, open_dataset
from mmcl.data.prepare import prepare_dataset
from mmcl.data.splits import split_names

SETS = {"real": ("ctrgcn_reference_12.npz", "ntu-skeletons"), "edge": ("ctrgcn_reference_edge.npz", "ntu-reference/edge-skeletons")}


@pytest.fixture(scope="module", params=sorted(SETS))
def reference(request, shared_data: Path):
    npz, folder = SETS[request.param]
    ref = np.load(shared_data / "ntu-reference" / npz, allow_pickle=False)
    return ref, shared_data / folder


def test_joints_match_ctrgcn_frame_for_frame(reference):
    ref, folder = reference
    for i, name in enumerate(ref["names"]):
        data = (folder / f"{name}.skeleton").read_bytes()
        actors = ntu.select_actors(ntu.parse_skeleton(data, name))
        denoised = ref[f"denoised_{name}"]
        assert actors.joints.reshape(len(actors.joints), -1).shape == denoised.shape, name
        np.testing.assert_allclose(actors.joints.reshape(denoised.shape), denoised, atol=1e-6, rtol=0)

        prepared = ntu.prepare_skeleton(data, name)
        t = int(ref["num_frames"][i])
        assert prepared.joints.shape == (t, 2, 25, 3), name  # valid frames only, never padded
        np.testing.assert_allclose(prepared.joints.reshape(t, 150), ref["data"][i, :t], atol=1e-6, rtol=0)
        assert not ref["data"][i, t:].any()
        assert prepared.colors.shape == (t, 2, 25, 2) and len(prepared.frame_index) == t


def test_prepared_dataset_matches_ctrgcn(reference, tmp_path):
    ref, folder = reference
    prepare_dataset(ntu.Ntu60Source(), folder, tmp_path / "ds", workers=2, progress=False)
    ds = open_dataset(tmp_path / "ds")
    names = [str(n) for n in ref["names"]]
    assert ds.names == names  # file (= sample-name) order, as CTR-GCN
    np.testing.assert_array_equal(ds.labels, ref["labels"])
    for i, name in enumerate(names):
        t = int(ref["num_frames"][i])
        np.testing.assert_allclose(ds.joints(name).reshape(-1, 150), ref["data"][i, :t], atol=1e-6, rtol=0)
    # CTR-GCN's NTU60_CS.npz / NTU60_CV.npz row orders
    for bench, key in (("xsub", "cs"), ("xview", "cv")):
        for part in ("train", "test"):
            expected = [names[j] for j in ref[f"{key}_{part}_idx"]]
            assert ds.splits[bench][part] == expected
            assert split_names("ntu60", bench, names)[part == "test"] == expected


def test_colours_are_aligned_with_the_raw_frames(reference):
    """Every stored row's colour coordinates are the raw file's values for frame frame_index[t],
    for the body whose joints are in that slot (checked through the joints)."""
    ref, folder = reference
    for name in ref["names"]:
        data = (folder / f"{name}.skeleton").read_bytes()
        raw = ntu.parse_skeleton(data, name)
        actors = ntu.select_actors(raw)
        file_frame = np.delete(np.arange(raw.declared_frames), raw.dropped)
        for t in range(len(actors.joints)):
            for slot in range(actors.joints.shape[1]):
                xyz = actors.joints[t, slot]
                if not xyz.any():  # an absent actor, or a body whose joints are all zero
                    zero_bodies = raw.colors[~raw.joints.any(axis=(1, 2))]
                    colour = actors.colors[t, slot]
                    assert not colour.any() or (zero_bodies == colour).all(axis=(1, 2)).any()
                    continue
                k = np.flatnonzero((raw.joints == xyz).all(axis=(1, 2)))
                assert len(k), (name, t, slot)
                np.testing.assert_array_equal(actors.colors[t, slot], raw.colors[k[0]])
                # a body seen in consecutive frames lands in the rows of those frames (with a gap,
                # CTR-GCN closes it up and later frames move earlier: the A056/A058 edge cases)
                body = raw.inst_body[k[0]]
                if np.all(np.diff(raw.inst_frame[raw.inst_body == body]) == 1):
                    assert actors.frames[t] == file_frame[raw.inst_frame[k[0]]], (name, t)


def test_the_two_quirk_fixes(shared_data: Path):
    edge = shared_data / "ntu-reference" / "edge-skeletons"
    ref = np.load(shared_data / "ntu-reference" / "ctrgcn_reference_edge.npz", allow_pickle=False)
    # slot-2 span: CTR-GCN discards actor 2's first piece (rows 0-20 zero); the fix keeps it
    data = (edge / "S001C002P003R001A054.skeleton").read_bytes()
    quirk = ntu.prepare_skeleton(data, "quirk").joints
    fixed = ntu.prepare_skeleton(data, "fixed", fix_slot2_span=True).joints
    assert not quirk[:21, 1].any() and fixed[:21, 1].any()
    np.testing.assert_array_equal(quirk[21:], fixed[21:])
    np.testing.assert_array_equal(quirk[:, 0], fixed[:, 0])
    # empty frames of a one-ID sample: CTR-GCN leaves -origin; the fix leaves 0
    data = (edge / "S001C003P008R001A017.skeleton").read_bytes()
    i = list(ref["names"]).index("S001C003P008R001A017")
    quirk = ntu.prepare_skeleton(data, "quirk").joints
    fixed = ntu.prepare_skeleton(data, "fixed", fix_empty_frame_origin=True).joints
    zero_rows = [0, 1, 60, 61]
    assert np.allclose(quirk[zero_rows].reshape(4, -1), ref["data"][i, zero_rows])
    assert quirk[zero_rows, 0].any() and not fixed[zero_rows].any()
    others = np.setdiff1d(np.arange(len(quirk)), zero_rows)
    np.testing.assert_array_equal(quirk[others], fixed[others])
