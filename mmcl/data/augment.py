"""Spatial augmentation and the stream transform, run in batches on the training device.

The per-sample temporal steps (crop, resize, frame sampling) live in
:class:`mmcl.data.loading.SkeletonClips`, in DataLoader workers. What is left is one
independent random transform per sample plus the stream transform, which a whole batch
can do at once on the device the model trains on:

- NTU recipe (CTR-GCN's ``random_rot``), training only: one 3-D rotation per sample,
  applied to every frame, before the stream transform. Each axis angle is uniform in
  ``±rotate`` radians and the matrix is ``Rz @ Ry @ Rx`` as in CTR-GCN's ``_rot``.
- NW-UCLA recipe: only the stream transform here. Its view transform (rotation, scale)
  and the min-max normalisation run per sample in ``SkeletonClips``, because upstream
  normalises over *all* frames of the clip before it samples 52 of them, and a batch only
  holds the 52.

``aug(x, train)`` draws its angles from torch's global RNG on ``x``'s device, so
Accelerate's RNG save/restore makes a resumed run draw the same angles.
:meth:`BatchAugment.per_sample` does the same maths on one sample with a given generator,
for the per-sample-in-workers path (see ``benchmarks/augment.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from mmcl.data.streams import check_stream, to_stream
from mmcl.errors import MMCLError
from mmcl.graphs import Layout

RECIPES: tuple[str, ...] = ("ntu", "ucla")


def check_recipe(recipe: str) -> str:
    """Return ``recipe`` if known, else raise an error listing the valid ones."""
    if recipe not in RECIPES:
        raise MMCLError(f"unknown input recipe {recipe!r}; expected one of {', '.join(RECIPES)}")
    return recipe


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) angles about x, y, z (radians) -> (N, 3, 3) matrices ``Rz @ Ry @ Rx``.

    The same matrices as CTR-GCN's ``tools._rot``, applied as ``x' = R @ x``.
    """
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(*rows: torch.Tensor) -> torch.Tensor:
        return torch.stack(rows, dim=-1).reshape(-1, 3, 3)

    cx, cy, cz = cos.unbind(1)
    sx, sy, sz = sin.unbind(1)
    rx = matrix(one, zero, zero, zero, cx, sx, zero, -sx, cx)
    ry = matrix(cy, zero, -sy, zero, one, zero, sy, zero, cy)
    rz = matrix(cz, sz, zero, -sz, cz, zero, zero, zero, one)
    return rz @ ry @ rx


def rotate(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply one (3, 3) matrix per sample to the coordinates of (N, 3, T, V, M)."""
    if x.shape[1] != 3:
        raise MMCLError(f"3-D rotation needs 3 coordinate channels, the input has {x.shape[1]}")
    n = x.shape[0]
    # broadcast multiply-add: with an inner dimension of 3, BLAS batched matmul is ~20x slower on CPU
    out = (matrices.to(x.dtype)[:, :, :, None] * x.reshape(n, 1, 3, -1)).sum(dim=2)
    return out.reshape(x.shape)


class BatchAugment:
    """The device-side part of an input recipe: random rotation (NTU, training) then the stream.

    ``aug(x, train)`` takes and returns (N, C, T, V, M) tensors.
    """

    def __init__(self, recipe: str, stream: str, layout: Layout, *, rotate: float = 0.3) -> None:
        self.recipe = check_recipe(recipe)
        self.stream = check_stream(stream)
        self.layout = layout
        if rotate < 0:
            raise MMCLError(f"rotation range must be >= 0 radians, got {rotate}")
        self.rotate = float(rotate)

    def __repr__(self) -> str:
        return f"BatchAugment(recipe={self.recipe!r}, stream={self.stream!r}, rotate={self.rotate})"

    @property
    def rotates(self) -> bool:
        """Whether training draws a random rotation (NTU recipe with a non-zero range)."""
        return self.recipe == "ntu" and self.rotate > 0

    def draw_angles(
        self, n: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(n, 3) angles uniform in ±rotate, from ``generator`` or the device's global RNG."""
        angles = torch.empty(n, 3, device=device, dtype=torch.float32)
        return angles.uniform_(-self.rotate, self.rotate, generator=generator)

    def apply(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic part: rotate by ``angles`` (N, 3) when given, then the stream transform."""
        if angles is not None:
            x = rotate(x, rotation_matrices(angles.to(x.device)))
        return to_stream(x, self.stream, self.layout)

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        angles = self.draw_angles(x.shape[0], device=x.device) if train and self.rotates else None
        return self.apply(x, angles)

    def per_sample(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """The same transform on one CPU sample (C, T, V, M), for use inside a Dataset.

        The angles come from ``generator``; the maths runs in numpy, which for one small
        sample costs a fraction of torch's per-operator overhead.
        """
        y = x.numpy()
        if train and self.rotates:
            if y.shape[0] != 3:
                raise MMCLError(f"3-D rotation needs 3 coordinate channels, the input has {y.shape[0]}")
            matrix = rotation_matrices(self.draw_angles(1, generator=generator))[0].numpy()
            y = (matrix @ y.reshape(3, -1)).reshape(y.shape)
        return torch.from_numpy(np.ascontiguousarray(to_stream(y[None], self.stream, self.layout)[0]))
