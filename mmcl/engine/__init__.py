"""Training and evaluation engine: Accelerate loop, checkpoints, evaluation, reports."""
