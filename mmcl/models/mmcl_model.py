"""The MMCL training model: a CTR-GCN backbone with the optional FAM and FRM co-learning heads.

Inference needs only the backbone (``skeleton_model()``): no RGB, no text, no vision encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.errors import MMCLError
from mmcl.models.ctrgcn import CTRGCN
from mmcl.models.heads import FAM, FRM


@dataclass(frozen=True)
class LossWeights:
    """``total = ce * CE(logits) + refine * CE(refined) + contrast * contrastive``."""

    ce: float = 1.0
    refine: float = 0.2
    contrast: float = 0.1


class MMCLModel(nn.Module):
    """CTR-GCN plus FAM (when ``rgb_dim`` or ``rgb_encoder`` is given) and FRM (when ``text_dim``).

    ``forward(x, rgb, text)`` returns a dict: ``logits`` always; ``skeleton_feature`` (the pooled
    backbone feature, ``(N, 256)``); ``rgb_embedding`` when FAM is on and ``rgb`` is given;
    ``refined`` when FRM is on and ``text`` is given. One backbone pass serves all of them.

    ``rgb`` is a batch of cached features ``(N, D)``, or of images when an ``rgb_encoder`` (any
    module mapping images to ``(N, D)`` features, e.g. ``vision.load_image_encoder``) is trained
    end to end. With both heads off this is plain CTR-GCN.
    """

    def __init__(
        self,
        backbone: CTRGCN,
        rgb_dim: int | None,
        text_dim: int | None,
        rgb_encoder: nn.Module | None = None,
        temperature: float = 0.4,
    ):
        super().__init__()
        self.backbone = backbone
        self.rgb_encoder = rgb_encoder
        if rgb_encoder is not None and rgb_dim is None:
            rgb_dim = getattr(rgb_encoder, "feature_dim", None)
            if rgb_dim is None:
                raise MMCLError("rgb_encoder has no feature_dim; pass rgb_dim, the size of its output features")
        self.fam = FAM(rgb_dim, backbone.feature_dim, temperature) if rgb_dim else None
        self.frm = FRM(text_dim, backbone.num_class) if text_dim else None

    def forward(self, x: Tensor, rgb: Tensor | None = None, text: Tensor | None = None) -> dict[str, Tensor]:
        pooled = self.backbone.pooled_features(x)
        out = {"logits": self.backbone.classify(pooled), "skeleton_feature": pooled}
        if self.fam is not None and rgb is not None:
            features = self.rgb_encoder(rgb) if self.rgb_encoder is not None else rgb
            out["rgb_embedding"] = self.fam(features.to(pooled.dtype) if features.is_floating_point() else features)
        if self.frm is not None and text is not None:
            out["refined"] = self.frm(out["logits"], text.to(out["logits"].dtype))
        return out

    def losses(self, outputs: dict[str, Tensor], labels: Tensor, weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
        """``ce`` and ``total`` always; ``refined_ce`` and ``contrastive`` when their head ran."""
        losses = {"ce": F.cross_entropy(outputs["logits"].float(), labels)}
        total = weights.ce * losses["ce"]
        if "refined" in outputs:
            losses["refined_ce"] = F.cross_entropy(outputs["refined"].float(), labels)
            total = total + weights.refine * losses["refined_ce"]
        if "rgb_embedding" in outputs:
            assert self.fam is not None
            losses["contrastive"] = self.fam.loss(outputs["skeleton_feature"], outputs["rgb_embedding"])
            total = total + weights.contrast * losses["contrastive"]
        losses["total"] = total
        return losses

    def skeleton_model(self) -> CTRGCN:
        """The bare backbone: what inference needs and what ``model.safetensors`` holds."""
        return self.backbone
