"""Streams: bone / motion definitions against explicit loops over CTR-GCN's bone pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcl.data.streams import STREAMS, to_stream
from mmcl.errors import MMCLError
from mmcl.graphs import NTU, UCLA

# CTR-GCN's feeders/bone_pairs.py, 1-based, root paired with itself.
NTU_PAIRS = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23),
    (21, 21), (23, 8), (24, 25), (25, 12),
)
# CTR-GCN's feeder_ucla.py bone list.
UCLA_PAIRS = (
    (1, 2), (2, 3), (3, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)


def loop_bones(x: np.ndarray, pairs) -> np.ndarray:
    out = np.zeros_like(x)
    for v1, v2 in pairs:
        out[:, :, :, v1 - 1] = x[:, :, :, v1 - 1] - x[:, :, :, v2 - 1]
    return out


def loop_motion(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for t in range(x.shape[2] - 1):
        out[:, :, t] = x[:, :, t + 1] - x[:, :, t]
    return out


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 3, 7, 25, 2)).astype(np.float32)


@pytest.mark.parametrize("layout, pairs", [(NTU, NTU_PAIRS), (UCLA, UCLA_PAIRS)])
def test_bone_matches_upstream_pairs(layout, pairs):
    x = np.random.default_rng(1).normal(size=(2, 3, 5, layout.num_joints, 2)).astype(np.float32)
    got = to_stream(torch.from_numpy(x), "bone", layout)
    np.testing.assert_allclose(got.numpy(), loop_bones(x, pairs), atol=1e-6)


def test_root_bone_is_zero_and_others_are_not(batch):
    bone = to_stream(torch.from_numpy(batch), "bone", NTU)
    assert NTU.root == 20  # spine_shoulder, joint 21 in the 1-based NTU numbering
    assert torch.all(bone[:, :, :, NTU.root] == 0)
    others = [j for j in range(25) if j != NTU.root]
    assert torch.all(bone[:, :, :, others].abs().sum(dim=(0, 1, 2, 4)) > 0)


def test_motion_streams(batch):
    x = torch.from_numpy(batch)
    jm = to_stream(x, "joint_motion", NTU)
    np.testing.assert_allclose(jm.numpy(), loop_motion(batch), atol=1e-6)
    assert torch.all(jm[:, :, -1] == 0)
    bm = to_stream(x, "bone_motion", NTU)
    np.testing.assert_allclose(bm.numpy(), loop_motion(loop_bones(batch, NTU_PAIRS)), atol=1e-6)
    assert torch.all(bm[:, :, -1] == 0)


def test_single_frame_motion_is_zero():
    x = torch.randn(2, 3, 1, 25, 2)
    assert torch.all(to_stream(x, "joint_motion", NTU) == 0)


@pytest.mark.parametrize("stream", STREAMS)
def test_numpy_and_torch_agree(batch, stream):
    a = to_stream(batch, stream, NTU)
    b = to_stream(torch.from_numpy(batch), stream, NTU)
    assert isinstance(a, np.ndarray)
    np.testing.assert_allclose(a, b.numpy(), atol=1e-6)


def test_joint_is_identity(batch):
    x = torch.from_numpy(batch)
    assert torch.equal(to_stream(x, "joint", NTU), x)


def test_unknown_stream_lists_valid_names(batch):
    with pytest.raises(MMCLError, match="unknown stream 'bones'.*joint, bone, joint_motion, bone_motion"):
        to_stream(batch, "bones", NTU)


def test_wrong_shape_is_an_error():
    with pytest.raises(MMCLError, match="20 joints but layout 'ntu' has 25"):
        to_stream(torch.zeros(1, 3, 4, 20, 1), "bone", NTU)
    with pytest.raises(MMCLError, match=r"\(N, C, T, V, M\)"):
        to_stream(torch.zeros(3, 4, 25, 1), "bone", NTU)
