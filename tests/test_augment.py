"""BatchAugment: CTR-GCN's random rotation in batches, and its per-sample twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcl.data.augment import BatchAugment, rotation_matrices
from mmcl.data.loading import SkeletonClips
from mmcl.data.store import DatasetWriter, Sample, open_dataset
from mmcl.data.streams import to_stream
from mmcl.errors import MMCLError
from mmcl.graphs import NTU, UCLA


def upstream_rot(ax: float, ay: float, az: float) -> np.ndarray:
    """CTR-GCN tools._rot for one sample, written out row by row."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def bone_lengths(x: torch.Tensor) -> torch.Tensor:
    return to_stream(x, "bone", NTU).norm(dim=1)


@pytest.fixture
def batch() -> torch.Tensor:
    x = torch.randn(6, 3, 16, 25, 2, generator=torch.Generator().manual_seed(0))
    x[1, ..., 1] = 0  # a one-actor sample
    return x


def test_rotation_matrices_match_upstream():
    angles = torch.tensor([[0.1, -0.2, 0.3], [-0.3, 0.25, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    got = rotation_matrices(angles)
    for a, r in zip(angles.tolist(), got):
        np.testing.assert_allclose(r.numpy(), upstream_rot(*a), atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    torch.testing.assert_close(got @ got.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(got), torch.ones(3, dtype=torch.float64))


def test_training_rotation_preserves_bone_lengths_and_absent_actors(batch):
    aug = BatchAugment("ntu", "joint", NTU)
    out = aug(batch, train=True)
    assert out.shape == batch.shape and not torch.allclose(out, batch)
    torch.testing.assert_close(bone_lengths(out), bone_lengths(batch), atol=1e-5, rtol=1e-5)
    assert torch.all(out[1, ..., 1] == 0)
    # one rotation per sample, the same for all frames: frame-to-frame distances are kept
    torch.testing.assert_close((out[:, :, 1:] - out[:, :, :-1]).norm(dim=1),
                               (batch[:, :, 1:] - batch[:, :, :-1]).norm(dim=1), atol=1e-5, rtol=1e-5)


def test_call_draws_angles_in_range_from_the_global_rng(batch):
    aug = BatchAugment("ntu", "bone", NTU, rotate=0.3)
    torch.manual_seed(5)
    out = aug(batch, train=True)
    torch.manual_seed(5)
    angles = aug.draw_angles(len(batch))
    assert angles.abs().max() <= 0.3
    torch.testing.assert_close(out, aug.apply(batch, angles))
    torch.manual_seed(5)
    torch.testing.assert_close(aug(batch, train=True), out)  # same seed, same batch
    many = aug.draw_angles(4000)
    assert many.abs().max() <= 0.3 and many.min() < -0.29 and many.max() > 0.29
    # the rotation applied is exactly Rz Ry Rx of those angles (each within ±0.3 rad)
    r = torch.from_numpy(np.stack([upstream_rot(*a) for a in angles.double().tolist()])).float()
    expected = torch.einsum("nij,njtvm->nitvm", r, batch)
    torch.testing.assert_close(out, to_stream(expected, "bone", NTU), atol=1e-5, rtol=1e-5)


def test_test_mode_and_ucla_only_apply_the_stream(batch):
    torch.testing.assert_close(BatchAugment("ntu", "bone", NTU)(batch, train=False), to_stream(batch, "bone", NTU))
    ucla = torch.randn(4, 3, 52, 20, 1)
    aug = BatchAugment("ucla", "joint_motion", UCLA)
    torch.testing.assert_close(aug(ucla, train=True), to_stream(ucla, "joint_motion", UCLA))
    torch.testing.assert_close(BatchAugment("ntu", "joint", NTU, rotate=0.0)(batch, train=True), batch)


def test_batched_equals_per_sample_given_the_same_angles(batch):
    aug = BatchAugment("ntu", "bone_motion", NTU)
    angles = aug.draw_angles(len(batch), generator=torch.Generator().manual_seed(1))
    batched = aug.apply(batch, angles)
    singles = torch.cat([aug.apply(batch[i : i + 1], angles[i : i + 1]) for i in range(len(batch))])
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=1e-6)
    # per_sample draws from the generator it is given
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    one = aug.per_sample(batch[2], train=True, generator=g1)
    torch.testing.assert_close(one, aug.apply(batch[2:3], aug.draw_angles(1, generator=g2))[0])
    torch.testing.assert_close(aug.per_sample(batch[2], train=False), to_stream(batch[2:3], "bone_motion", NTU)[0])


def test_per_sample_path_inside_the_dataset(tmp_path):
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "d", name="d", layout=NTU, num_person=2, channels=3, class_names=["a"],
                       has_colors=False, meta_fields=[], source={}) as w:
        for i, t in enumerate((70, 120)):
            w.add(Sample(f"s{i}", 0, rng.normal(size=(t, 2, 25, 3)).astype(np.float32)))
        w.finish({"b": {"train": ["s0", "s1"], "test": ["s0", "s1"]}})
    ds = open_dataset(tmp_path / "d")
    opts = dict(recipe="ntu", window=64, num_person=2, seed=1)
    for train in (False, True):
        plain = SkeletonClips(ds, ds.names, train=train, **opts)
        streamed = SkeletonClips(ds, ds.names, train=train, augment=BatchAugment("ntu", "bone", NTU), **opts)
        for i in range(2):
            x, y = plain[i]["x"], streamed[i]["x"]
            if train:  # rotated: same bone lengths as the unrotated clip, not the same values
                torch.testing.assert_close(y.norm(dim=0), to_stream(x[None], "bone", NTU)[0].norm(dim=0),
                                           atol=1e-4, rtol=1e-4)
                assert not torch.allclose(y, to_stream(x[None], "bone", NTU)[0])
            else:
                torch.testing.assert_close(y, to_stream(x[None], "bone", NTU)[0])
        again = SkeletonClips(ds, ds.names, train=train, augment=BatchAugment("ntu", "bone", NTU), **opts)
        assert torch.equal(again[1]["x"], streamed[1]["x"])


def test_bad_arguments(batch):
    with pytest.raises(MMCLError, match="unknown input recipe 'kinetics'"):
        BatchAugment("kinetics", "joint", NTU)
    with pytest.raises(MMCLError, match="unknown stream 'velocity'"):
        BatchAugment("ntu", "velocity", NTU)
    with pytest.raises(MMCLError, match="3 coordinate channels, the input has 2"):
        BatchAugment("ntu", "joint", NTU)(batch[:, :2], train=True)
