"""Models: the CTR-GCN backbone, MMCL's co-learning heads and wrapper, fast inference."""

from mmcl.models.ctrgcn import CTRGCN, load_upstream_state_dict
from mmcl.models.heads import FAM, FRM, contrastive_loss
from mmcl.models.inference import bf16_is_fast, fold_batchnorm, optimize_for_inference
from mmcl.models.mmcl_model import LossWeights, MMCLModel
from mmcl.models.vision import ImageFeatureEncoder, load_image_encoder

__all__ = [
    "CTRGCN",
    "FAM",
    "FRM",
    "ImageFeatureEncoder",
    "LossWeights",
    "MMCLModel",
    "bf16_is_fast",
    "contrastive_loss",
    "fold_batchnorm",
    "load_image_encoder",
    "load_upstream_state_dict",
    "optimize_for_inference",
]
