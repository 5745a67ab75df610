"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests train on the CPU, also on a machine with a GPU, so their results are deterministic and
# the same as on CI (which has none). In-process runs read ACCELERATE_USE_CPU; multi-process runs
# get CPU_ONLY_ENV, which also hides the GPUs from their processes (with a GPU visible, gloo DDP
# under `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=1 breaks in Accelerate's
# barrier). tests/test_cuda.py opts back in where a GPU is present.
os.environ.setdefault("ACCELERATE_USE_CPU", "1")
CPU_ONLY_ENV = {"ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def shared_data_dir() -> Path:
    """Location of the real recordings (../shared/data beside the repo, or $MMCL_SHARED_DATA)."""
    env = os.environ.get("MMCL_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings folder; tests using it skip when it is absent (a user's clone)."""
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(
            f"real recordings not found at {path} (they live in ../shared/data beside the repo, "
            "or set MMCL_SHARED_DATA); this test needs them"
        )
    return path
