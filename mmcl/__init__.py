"""mmcl: multi-modality co-learning for efficient skeleton-based action recognition."""

__version__ = "0.1.0"
