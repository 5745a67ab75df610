"""A trainable image encoder for FAM's end-to-end option (the paper trained Inception-v3 this way).

``load_image_encoder`` wraps any local Transformers ``AutoModel`` image backbone (ViT, CLIP,
SigLIP, ResNet, DINOv2, ...) as a module mapping ``pixel_values (N, 3, H, W)`` to pooled
features ``(N, D)``. By default FAM uses frozen features cached once instead (much cheaper).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmcl.hub import check_remote_code, load_or_explain, resolve_model


class ImageFeatureEncoder(nn.Module):
    """Pooled features of a Transformers image model.

    Pooling: ``get_image_features`` when the model has it (CLIP, SigLIP: the projected image
    embedding), else ``pooler_output`` (flattened for CNNs), else the mean of
    ``last_hidden_state`` over tokens or spatial positions.
    """

    def __init__(self, model: nn.Module, image_size: int = 224):
        super().__init__()
        self.model = model
        self.image_size = image_size
        with torch.no_grad():
            was_training = model.training
            model.eval()
            probe = torch.zeros(1, _num_channels(model), image_size, image_size, dtype=_dtype(model))
            self.feature_dim = int(self.forward(probe).shape[-1])
            model.train(was_training)

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.to(_dtype(self.model))
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixel_values)
            pooled = out if isinstance(out, Tensor) else out.pooler_output
        else:
            out = self.model(pixel_values=pixel_values)
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                hidden = out.last_hidden_state
                pooled = hidden.mean(dim=(-2, -1)) if hidden.ndim == 4 else hidden.mean(1)
        return pooled.flatten(1)


def _vision_config(model: nn.Module) -> Any:
    config = model.config
    return getattr(config, "vision_config", None) or config


def _num_channels(model: nn.Module) -> int:
    return int(getattr(_vision_config(model), "num_channels", 3))


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def load_image_encoder(path_or_id: str, trust_remote_code: bool = False, allow_download: bool = False) -> ImageFeatureEncoder:
    """Load a local image backbone (a model folder, or a hub id already in the local cache).

    Offline by default: a missing model is an MMCLError saying how to download it
    (``huggingface-cli download ID --local-dir DIR``). Models with their own code need
    ``trust_remote_code=True``.
    """
    import transformers

    source, kwargs = resolve_model(path_or_id, allow_download=allow_download)
    check_remote_code(source, kwargs, trust_remote_code)
    model = load_or_explain(
        "image encoder",
        source,
        kwargs,
        lambda: transformers.AutoModel.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs),
    )
    size = getattr(_vision_config(model), "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    return ImageFeatureEncoder(model, image_size=size)
