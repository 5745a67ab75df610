"""Frozen encoders: a sentence encoder for ``--text-encoder`` and an image backbone for FAM's
cached RGB features (``--image-features --image-encoder``), both any ``AutoModel`` folder."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mmcl.hub import check_remote_code, dtype_kwargs, load_or_explain, resolve_model


def _load(model: str, auto_cls: str, *, device: Any, dtype: Any, trust_remote_code: bool,
          allow_download: bool, what: str) -> tuple[Any, Any]:
    import transformers

    source, kwargs = resolve_model(model, allow_download=allow_download)
    check_remote_code(source, kwargs, trust_remote_code)
    kw = dict(kwargs, trust_remote_code=trust_remote_code)
    pre = load_or_explain(f"{what} preprocessor", source, kwargs,
                          lambda: getattr(transformers, auto_cls).from_pretrained(source, **kw))
    net = load_or_explain(what, source, kwargs,
                          lambda: transformers.AutoModel.from_pretrained(source, **dtype_kwargs(dtype), **kw))
    return pre, net.to(device).eval()


class TextEncoder:
    """Mean-pooled last hidden states of any ``AutoModel`` text encoder (a sentence encoder)."""

    def __init__(self, model: str, *, device: Any, dtype: Any = torch.float32, trust_remote_code: bool = False,
                 allow_download: bool = False, max_length: int = 128) -> None:
        self.tokenizer, self.model = _load(model, "AutoTokenizer", device=device, dtype=dtype,
                                           trust_remote_code=trust_remote_code, allow_download=allow_download,
                                           what="text encoder")
        self.device, self.max_length = device, max_length

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy().astype(np.float32)


class ImageEncoder:
    """Pooled image features of any Transformers image backbone (ViT, CLIP, DINOv2, ResNet, ...).

    Pooling: the model's ``get_image_features`` when it has one (CLIP-like, projected), else its
    ``pooler_output`` (flattened for CNNs), else the mean of ``last_hidden_state`` over tokens or
    spatial positions.
    """

    def __init__(self, model: str, *, device: Any, dtype: Any = torch.float32, trust_remote_code: bool = False,
                 allow_download: bool = False) -> None:
        self.processor, self.model = _load(model, "AutoImageProcessor", device=device, dtype=dtype,
                                           trust_remote_code=trust_remote_code, allow_download=allow_download,
                                           what="image encoder")
        self.device, self.dtype = device, dtype

    @torch.inference_mode()
    def encode(self, images: Sequence[Any]) -> np.ndarray:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.dtype)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
            pooled = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            out = self.model(pixel_values=pixels)
            pooled = getattr(out, "image_embeds", None)
            if pooled is None:
                pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                hidden = out.last_hidden_state
                pooled = hidden.mean(dim=(-2, -1)) if hidden.ndim == 4 else hidden.mean(1)
        return pooled.flatten(1).float().cpu().numpy().astype(np.float32)
