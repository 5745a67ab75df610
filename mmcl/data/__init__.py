"""Datasets: readers per source, the prepared-dataset store, splits, features."""

from mmcl.data.store import SkeletonDataset, open_dataset

__all__ = ["SkeletonDataset", "open_dataset"]
