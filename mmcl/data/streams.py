"""Input streams: joint, bone, joint motion, bone motion (CTR-GCN's definitions).

All take a batch ``x`` of shape (N, C, T, V, M) (a torch tensor, or a numpy array for
offline use) and return an array of the same shape and type:

- ``joint``: the coordinates themselves;
- ``bone``: ``x[..., child, :] - x[..., parent, :]`` for each (child, parent) bone of the
  layout; the root joint (never a child) gets a zero bone;
- ``joint_motion``: ``x[:, :, t + 1] - x[:, :, t]``, with the last frame zero;
- ``bone_motion``: the motion of the bone stream.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from mmcl.errors import MMCLError
from mmcl.graphs import Layout

STREAMS: tuple[str, ...] = ("joint", "bone", "joint_motion", "bone_motion")

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def check_stream(stream: str) -> str:
    """Return ``stream`` if it is a known stream name, else raise an error listing the valid ones."""
    if stream not in STREAMS:
        raise MMCLError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
    return stream


def bones(x: Array, layout: Layout) -> Array:
    """The bone stream: each joint minus its parent; the root (its own parent) becomes zero."""
    n, c, t, v, m = x.shape
    # gather over the flattened (V, M) axis: one contiguous index per row, several times
    # faster than indexing the joint axis of the 5-D array
    index = (layout.parents[:, None] * m + np.arange(m)).reshape(-1)
    flat = x.reshape(n, c, t, v * m)
    if isinstance(x, torch.Tensor):
        parents = flat.index_select(3, torch.as_tensor(index, device=x.device))
    else:
        parents = flat[..., index]
    return (flat - parents).reshape(x.shape)


def motion(x: Array) -> Array:
    """Frame differences ``x[t + 1] - x[t]`` along time (dim 2); the last frame is zero."""
    if isinstance(x, torch.Tensor):
        out = torch.empty_like(x)
        torch.sub(x[:, :, 1:], x[:, :, :-1], out=out[:, :, :-1])
    else:
        out = np.empty_like(x)
        np.subtract(x[:, :, 1:], x[:, :, :-1], out=out[:, :, :-1])
    out[:, :, -1] = 0
    return out


def to_stream(x: Array, stream: str, layout: Layout) -> Array:
    """Turn joint coordinates (N, C, T, V, M) into the named stream (see the module docstring)."""
    check_stream(stream)
    if x.ndim != 5:
        raise MMCLError(f"to_stream expects a batch of shape (N, C, T, V, M), got shape {tuple(x.shape)}")
    if x.shape[3] != layout.num_joints:
        raise MMCLError(
            f"input has {x.shape[3]} joints but layout {layout.name!r} has {layout.num_joints}"
        )
    if stream == "joint":
        return x
    if stream == "bone":
        return bones(x, layout)
    if stream == "joint_motion":
        return motion(x)
    return motion(bones(x, layout))
