"""The interface every raw-dataset reader implements, so one ``prepare`` pipeline serves all.

A source turns one raw file into one :class:`~mmcl.data.store.Sample`. ``read`` runs in worker
processes, so a source must be picklable (a plain dataclass of settings) and hold no open state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from mmcl.data.store import Sample
from mmcl.graphs import Layout


class SampleError(Exception):
    """A raw file that cannot become a sample. The pipeline lists it in rejected.csv and goes on.

    The message says where (line number when known) and why.
    """


class DatasetSource(Protocol):
    """What ``mmcl prepare`` needs to know about a raw dataset."""

    name: str  # dataset name stored in dataset.json, e.g. "ntu60"
    layout: Layout
    num_person: int  # M, the actor slots stored per frame
    channels: int  # C, coordinates per joint (3)
    has_colors: bool  # whether colour-image joint coordinates exist
    class_names: Sequence[str]
    meta_fields: Sequence[str]  # index columns the splits need, e.g. subject, camera, setup

    def discover(self, raw: Path) -> list[Path]:
        """The raw files under ``raw``, sorted. Raises MMCLError for a missing, empty or wrong-kind folder."""
        ...

    def sample_name(self, path: Path) -> str:
        """The sample name of a raw file."""
        ...

    def skip_reason(self, name: str) -> str | None:
        """Why a sample is excluded up front (e.g. on the official missing-skeleton list), or None."""
        ...

    def read(self, path: Path) -> Sample:
        """Parse one raw file. Raises SampleError for bad input."""
        ...

    def splits(self, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """{benchmark: {"train": [...], "test": [...]}} for the kept sample names."""
        ...
