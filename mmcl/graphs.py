"""Skeleton layouts: joint names, bones and the CTR-GCN adjacency partitions.

Bones are (child, parent) pairs, 0-based. The bone stream is ``x[child] - x[parent]``
and the root (the joint that is never a child) gets a zero bone, as in CTR-GCN.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mmcl.errors import MMCLError


@dataclass(frozen=True)
class Layout:
    """A skeleton layout: joint names and (child, parent) bone pairs, 0-based."""

    name: str
    joint_names: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def root(self) -> int:
        """The joint that is never a child (gets the zero bone)."""
        children = {c for c, _ in self.bones}
        roots = [j for j in range(self.num_joints) if j not in children]
        return roots[0]

    @cached_property
    def parents(self) -> np.ndarray:
        """parents[j] = parent joint of j; the root is its own parent (zero bone)."""
        parents = np.arange(self.num_joints)
        for child, parent in self.bones:
            parents[child] = parent
        return parents

    def adjacency(self) -> np.ndarray:
        """CTR-GCN's spatial partitions (3, V, V): identity, normalized inward, normalized outward."""
        v = self.num_joints
        inward = _edge_matrix([(c, p) for c, p in self.bones], v)
        outward = _edge_matrix([(p, c) for c, p in self.bones], v)
        return np.stack([np.eye(v), _normalize_columns(inward), _normalize_columns(outward)]).astype(
            np.float32
        )

    def to_json(self) -> dict:
        return {"name": self.name, "joints": list(self.joint_names), "bones": [list(b) for b in self.bones]}

    @classmethod
    def from_json(cls, data: dict) -> "Layout":
        return cls(data["name"], tuple(data["joints"]), tuple((int(c), int(p)) for c, p in data["bones"]))


def _edge_matrix(edges: list[tuple[int, int]], v: int) -> np.ndarray:
    """A[j, i] = 1 for each edge (i, j), CTR-GCN's ``edge2mat``."""
    a = np.zeros((v, v))
    for i, j in edges:
        a[j, i] = 1
    return a


def _normalize_columns(a: np.ndarray) -> np.ndarray:
    """A @ D^-1 with D the column sums (zero columns stay zero), CTR-GCN's ``normalize_digraph``."""
    col = a.sum(0)
    inv = np.where(col > 0, 1.0 / np.where(col > 0, col, 1), 0.0)
    return a @ np.diag(inv)


def _one_based(pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((c - 1, p - 1) for c, p in pairs)


NTU = Layout(
    "ntu",
    (
        "spine_base", "spine_mid", "neck", "head", "shoulder_left", "elbow_left", "wrist_left",
        "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left",
        "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right", "ankle_right",
        "foot_right", "spine_shoulder", "handtip_left", "thumb_left", "handtip_right", "thumb_right",
    ),
    _one_based([
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
    ]),
)

# NW-UCLA: Kinect v1 SDK joint order.
UCLA = Layout(
    "ucla",
    (
        "hip_center", "spine", "shoulder_center", "head", "shoulder_left", "elbow_left",
        "wrist_left", "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right",
        "hip_left", "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right",
        "ankle_right", "foot_right",
    ),
    _one_based([
        (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
        (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
    ]),
)

# UTD-MHAD: its own joint order (Skeleton_joint_order.txt), rooted at shoulder_center like NTU.
UTD_MHAD = Layout(
    "utd-mhad",
    (
        "head", "shoulder_center", "spine", "hip_center", "shoulder_left", "elbow_left",
        "wrist_left", "hand_left", "shoulder_right", "elbow_right", "wrist_right", "hand_right",
        "hip_left", "knee_left", "ankle_left", "foot_left", "hip_right", "knee_right",
        "ankle_right", "foot_right",
    ),
    _one_based([
        (1, 2), (3, 2), (4, 3), (5, 2), (6, 5), (7, 6), (8, 7), (9, 2), (10, 9), (11, 10),
        (12, 11), (13, 4), (14, 13), (15, 14), (16, 15), (17, 4), (18, 17), (19, 18), (20, 19),
    ]),
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (NTU, UCLA, UTD_MHAD)}


def get_layout(name: str) -> Layout:
    """Look up a built-in layout by name."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise MMCLError(f"unknown skeleton layout {name!r}; expected one of {sorted(LAYOUTS)}") from None
