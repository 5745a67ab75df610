"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
