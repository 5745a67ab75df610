"""RGB strips as encoder input, for FAM's end-to-end option (``features.rgb_end_to_end``).

A strip is ``<dataset>/rgb/<name>.jpg`` (made by ``mmcl prepare ... --videos/--frames``, see
:mod:`mmcl.data.rgb`): K actor crops side by side. :class:`StripLoader` reads one and returns
a float tensor ``(3, H, W)`` ready for the image encoder: the whole strip is resized to the
encoder's input size (so no center crop cuts frames off), then the model folder's
``AutoImageProcessor`` rescales and normalises it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from mmcl.errors import MMCLError

PREPARE_HINT = "make the strips with `mmcl prepare ... --videos DIR` or `--frames DIR`"


def processor_size(processor: Any) -> tuple[int, int]:
    """(height, width) of the images the processor hands the model."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if not isinstance(size, dict):
        size = {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if size.get("shortest_edge"):
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise MMCLError(f"cannot tell the input size of image processor {type(processor).__name__} (size={size!r})")


def load_image_processor(model: str, *, trust_remote_code: bool = False) -> Any:
    """The ``AutoImageProcessor`` of a local image model folder (clear error when missing)."""
    import transformers

    from mmcl.hub import check_remote_code, load_or_explain, resolve_model

    source, kwargs = resolve_model(model, allow_download=False)
    check_remote_code(source, kwargs, trust_remote_code)
    return load_or_explain("image encoder preprocessor", source, kwargs,
                           lambda: transformers.AutoImageProcessor.from_pretrained(
                               source, trust_remote_code=trust_remote_code, **kwargs))


class StripLoader:
    """``loader(name)`` -> the strip of sample ``name`` as float32 ``(3, H, W)`` encoder input.

    Picklable (DataLoader workers get a copy). A missing strip is an MMCLError naming the sample.
    """

    def __init__(self, folder: Path | str, processor: Any) -> None:
        self.folder = Path(folder)
        self.processor = processor
        self.size = processor_size(processor)

    @classmethod
    def for_dataset(cls, dataset: Path | str, model: str, *, trust_remote_code: bool = False) -> "StripLoader":
        """Strips of a prepared dataset (its ``rgb/`` folder), preprocessed for ``model``."""
        return cls(Path(dataset) / "rgb", load_image_processor(model, trust_remote_code=trust_remote_code))

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.jpg"

    def check(self, names: Iterable[str]) -> None:
        """Raise one error listing every sample without a strip (before training starts)."""
        missing = [n for n in names if not self.path(n).is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise MMCLError(f"{self.folder}: no RGB strip for {len(missing)} training sample(s): {shown}; "
                            f"{PREPARE_HINT}, or use cached features.rgb instead")

    def __call__(self, name: str) -> torch.Tensor:
        from PIL import Image

        path = self.path(name)
        if not path.is_file():
            raise MMCLError(f"sample {name}: RGB strip {path} is missing; {PREPARE_HINT}")
        try:
            with Image.open(path) as im:
                image = im.convert("RGB").resize(self.size[::-1], Image.Resampling.BICUBIC)
        except OSError as exc:
            raise MMCLError(f"sample {name}: cannot read RGB strip {path} ({exc}); {PREPARE_HINT}") from exc
        pixels = self.processor(images=np.asarray(image), return_tensors="pt")["pixel_values"][0]
        return pixels.to(torch.float32)
