"""Feature files: per-sample vectors (LLM text features, cached RGB features) joined by name.

Contract (DESIGN.md): an ``.npz`` with ``names`` (unicode [N]), ``features`` (float32 or
float16 [N, D]) and ``meta`` (a JSON string: model, prompts, feature kind, dimension, mmcl
version). Training joins features to samples by name, never by row order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmcl import __version__
from mmcl.errors import MMCLError


@dataclass
class FeatureFile:
    """A loaded feature file."""

    path: Path
    names: np.ndarray
    features: np.ndarray
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def take(self, names: Sequence[str], *, what: str = "samples") -> np.ndarray:
        """Rows for ``names`` in that order (float32). Missing names are an error naming them."""
        index = {n: i for i, n in enumerate(self.names.tolist())}
        missing = [n for n in names if n not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MMCLError(
                f"{self.path}: no features for {len(missing)} of {len(names)} {what}: {shown} "
                "(re-run the extraction for them, e.g. `mmcl extract-text`, which resumes)"
            )
        rows = np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))
        return np.asarray(self.features[rows], dtype=np.float32)


def save_features(path: Path | str, names: Sequence[str], features: np.ndarray, meta: dict[str, Any]) -> None:
    """Write a feature file atomically (temporary file, then rename)."""
    path = Path(path)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(names):
        raise MMCLError(f"{path}: features of shape {features.shape} for {len(names)} names; expected (N, D)")
    if features.dtype not in (np.float32, np.float16):
        features = features.astype(np.float32)
    if len(set(names)) != len(names):
        raise MMCLError(f"{path}: duplicate sample names in features")
    meta = {"dim": int(features.shape[1]), "mmcl_version": __version__, **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, names=np.asarray(list(names), dtype=str), features=features, meta=np.asarray(json.dumps(meta)))
    os.replace(tmp, path)


def load_features(path: Path | str) -> FeatureFile:
    """Read a feature file (no pickle), checking the contract."""
    path = Path(path)
    if not path.is_file():
        raise MMCLError(f"feature file {path} does not exist (produce it with `mmcl extract-text`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"names", "features", "meta"} - set(npz.files)
            if missing:
                raise MMCLError(f"{path}: missing keys {sorted(missing)}; expected names, features, meta")
            names, features, meta = npz["names"], npz["features"], json.loads(str(npz["meta"]))
    except (ValueError, OSError) as exc:
        raise MMCLError(f"{path}: not a readable feature file ({exc})") from exc
    if features.ndim != 2 or features.shape[0] != names.shape[0]:
        raise MMCLError(f"{path}: features {features.shape} do not match {names.shape[0]} names")
    return FeatureFile(path, names, features, meta)
