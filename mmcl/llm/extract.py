"""``mmcl extract-text``: text features from a multimodal LLM, and cached RGB features, per strip.

Inputs are the RGB strips of a prepared dataset (``<dataset>/rgb/<name>.jpg``, made by
``mmcl prepare ... --videos/--frames``). Outputs follow the feature-file contract
(:mod:`mmcl.data.features`):

* ``<dataset>/features/text_<llm>_<feature>.npz`` plus ``answers.jsonl`` beside it, one
  ``{"name", "prompt", "answer"}`` line per sample and prompt (with ``"features"``: the feature
  file's name, so answers of several runs can share the folder);
* ``<dataset>/features/rgb_<encoder>.npz`` for ``--image-features``.

Features (``--feature``), concatenated over the prompts in order:

* ``yesno``: [P(yes), P(no)] of the first generated token (normalised over the two): 2 per prompt;
* ``embedding``: mean-pooled embedding of the answer: the LLM's own input token embeddings, or
  ``--text-encoder``'s mean-pooled last hidden states;
* ``tokens``: the generated token ids as floats, padded (pad id) or truncated to
  ``--token-length`` (default 3: BLIP's ``[DEC] answer [SEP]``, the upstream 3-number feature).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmcl.data.features import save_features
from mmcl.data.store import open_dataset
from mmcl.errors import MMCLError
from mmcl.hub import slug
from mmcl.llm.prompts import is_yes_no

log = logging.getLogger(__name__)

FEATURES = ("yesno", "embedding", "tokens")


@dataclass
class TextOptions:
    """Everything ``extract_text`` needs (the CLI fills it from its options)."""

    data: Path
    llm: str = "blip"
    model: str | None = None
    prompts: list[str] = field(default_factory=list)
    feature: str = "auto"  # auto: yesno when every prompt is a yes/no question, else embedding
    text_encoder: str | None = None
    token_length: int = 3
    max_new_tokens: int | None = None  # default: 10 for yes/no prompts, else 48
    num_beams: int = 1  # 1: greedy; BLIP's released VQA code decodes with 3
    batch_size: int = 16
    workers: int = 2
    flush_every: int = 256
    dtype: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    allow_download: bool = False
    out: Path | None = None
    overwrite: bool = False
    restart: bool = False
    progress: bool = True


@dataclass
class ExtractResult:
    """What a finished run wrote (main process; other processes get ``path`` only)."""

    path: Path
    samples: int = 0
    dim: int = 0
    seconds: float = 0.0
    missing_strips: list[str] = field(default_factory=list)
    per_process: dict[int, int] = field(default_factory=dict)
    main: bool = True


def choose_feature(feature: str, prompts: Sequence[str]) -> str:
    if feature == "auto":
        return "yesno" if all(is_yes_no(p) for p in prompts) else "embedding"
    if feature not in FEATURES:
        raise MMCLError(f"--feature {feature!r}: choose auto, {', '.join(FEATURES)}")
    return feature


def strip_names(data: Path) -> tuple[Path, list[str], list[str]]:
    """(rgb folder, names with a strip, names without) in dataset order."""
    ds = open_dataset(data)
    rgb = Path(data) / "rgb"
    if not rgb.is_dir():
        raise MMCLError(f"{data} has no RGB strips ({rgb} is missing); build them with "
                        "`mmcl prepare ... --videos DIR` or `--frames DIR`")
    present = {f[:-4] for f in os.listdir(rgb) if f.endswith(".jpg")}
    have = [n for n in ds.names if n in present]
    missing = [n for n in ds.names if n not in present]
    if not have:
        raise MMCLError(f"{rgb}: no <name>.jpg strip for any of the {len(ds.names)} samples")
    if missing:
        log.warning("%d of %d samples have no RGB strip and get no features (first: %s)",
                    len(missing), len(ds.names), ", ".join(missing[:5]))
    return rgb, have, missing


def load_strip(rgb: Path, name: str) -> Any:
    """One strip as an RGB PIL image (an unreadable file is an error naming it)."""
    from PIL import Image

    path = rgb / f"{name}.jpg"
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise MMCLError(f"{path}: unreadable RGB strip ({exc}); rebuild the strips with `mmcl prepare`") from exc


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise MMCLError(f"{out} already exists; pass --overwrite to replace it")


def _device_and_dtype(dtype: str) -> tuple[Any, Any]:
    from mmcl.hub import pick_dtype
    from mmcl.llm.runner import process_state

    device = process_state().device
    return device, pick_dtype(dtype, device)


def extract_text(opts: TextOptions) -> ExtractResult:
    """Answer every prompt for every strip with a vision-language model; write the features."""
    from mmcl.llm.backends import load_backend
    from mmcl.llm.runner import run_sharded

    if not opts.prompts:
        raise MMCLError("no prompts given")
    feature = choose_feature(opts.feature, opts.prompts)
    if feature == "yesno" and not all(is_yes_no(p) for p in opts.prompts):
        log.warning("--feature yesno with prompts that are not yes/no questions (%s): their P(yes)/P(no) "
                    "mean little; consider --feature embedding",
                    "; ".join(p for p in opts.prompts if not is_yes_no(p)))
    if opts.text_encoder and feature != "embedding":
        raise MMCLError(f"--text-encoder only applies to --feature embedding (this run extracts {feature})")
    if opts.token_length < 1 or opts.batch_size < 1 or opts.flush_every < 1 or opts.num_beams < 1:
        raise MMCLError("--token-length, --batch-size, --flush-every and --num-beams must be at least 1")
    max_new = opts.max_new_tokens or (10 if all(is_yes_no(p) for p in opts.prompts) else 48)
    if feature == "tokens":
        max_new = max(max_new, opts.token_length)
    out = Path(opts.out) if opts.out else Path(opts.data) / "features" / f"text_{opts.llm}_{feature}.npz"
    _check_out(out, opts.overwrite)
    rgb, names, missing = strip_names(Path(opts.data))

    device, dtype = _device_and_dtype(opts.dtype)
    backend = load_backend(opts.llm, opts.model, device=device, dtype=dtype, device_map=opts.device_map,
                           trust_remote_code=opts.trust_remote_code, allow_download=opts.allow_download)
    if feature == "yesno":
        backend.yes_no_ids()  # fail early when the tokenizer cannot say yes/no
    encoder = None
    if opts.text_encoder:
        from mmcl.llm.encoders import TextEncoder

        encoder = TextEncoder(opts.text_encoder, device=backend.device, trust_remote_code=opts.trust_remote_code,
                              allow_download=opts.allow_download)

    def process(batch_names: list[str], images: list[Any]) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        parts, records = [], [[] for _ in batch_names]
        for prompt in opts.prompts:
            gen = backend.generate(images, prompt, max_new_tokens=max_new, num_beams=opts.num_beams)
            if feature == "yesno":
                parts.append(gen.yes_no)
            elif feature == "tokens":
                parts.append(pad_tokens(gen.token_ids, opts.token_length, backend.pad_id or 0))
            elif encoder is not None:
                parts.append(encoder.encode(gen.answers))
            else:
                parts.append(backend.embed_tokens(gen.token_ids))
            for i, name in enumerate(batch_names):
                records[i].append({"name": name, "prompt": prompt, "answer": gen.answers[i]})
        return np.concatenate(parts, axis=1), records

    model_name = opts.model or backend.model_id
    settings = {"kind": "text", "llm": opts.llm, "model": str(model_name), "prompts": list(opts.prompts),
                "feature": feature, "token_length": opts.token_length if feature == "tokens" else None,
                "text_encoder": opts.text_encoder, "max_new_tokens": max_new, "num_beams": opts.num_beams,
                "dtype": str(dtype)}
    meta = {**settings, "layout": _layout(feature, len(opts.prompts)), "missing_strips": len(missing),
            "missing_strip_names": missing[:100], "source": "mmcl extract-text"}

    def finish(merged: Any) -> None:
        save_features(out, merged.names, merged.features,
                      {**meta, "samples_per_process": {str(k): v for k, v in sorted(merged.per_process.items())}})
        write_answers(out, [r for recs in merged.records for r in recs], model=str(model_name))

    start = time.perf_counter()
    merged = run_sharded(out, names, partial(load_strip, rgb), process, finish, settings=settings,
                         batch_size=opts.batch_size, flush_every=opts.flush_every, workers=opts.workers,
                         restart=opts.restart, progress=opts.progress, desc=f"extract-text {opts.llm}")
    return _result(out, merged, missing, time.perf_counter() - start)


def extract_image_features(data: Path, image_encoder: str, *, out: Path | None = None, batch_size: int = 32,
                           workers: int = 2, flush_every: int = 1024, dtype: str = "auto",
                           trust_remote_code: bool = False, allow_download: bool = False, overwrite: bool = False,
                           restart: bool = False, progress: bool = True) -> ExtractResult:
    """Run a frozen image backbone over every strip; write ``features/rgb_<encoder>.npz``."""
    from mmcl.llm.encoders import ImageEncoder
    from mmcl.llm.runner import run_sharded

    out = Path(out) if out else Path(data) / "features" / f"rgb_{slug(image_encoder)}.npz"
    _check_out(out, overwrite)
    rgb, names, missing = strip_names(Path(data))
    device, torch_dtype = _device_and_dtype(dtype)
    encoder = ImageEncoder(image_encoder, device=device, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                           allow_download=allow_download)

    def process(batch_names: list[str], images: list[Any]) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        return encoder.encode(images), [[] for _ in batch_names]

    settings = {"kind": "rgb", "model": str(image_encoder), "dtype": str(torch_dtype)}
    meta = {**settings, "feature": "image", "pooling": "get_image_features / pooler_output / mean of last_hidden_state",
            "missing_strips": len(missing), "missing_strip_names": missing[:100], "source": "mmcl extract-text --image-features"}

    def finish(merged: Any) -> None:
        save_features(out, merged.names, merged.features,
                      {**meta, "samples_per_process": {str(k): v for k, v in sorted(merged.per_process.items())}})

    start = time.perf_counter()
    merged = run_sharded(out, names, partial(load_strip, rgb), process, finish, settings=settings,
                         batch_size=batch_size, flush_every=flush_every, workers=workers, restart=restart,
                         progress=progress, desc="rgb features")
    return _result(out, merged, missing, time.perf_counter() - start)


def pad_tokens(token_ids: Sequence[Sequence[int]], length: int, pad_id: int) -> np.ndarray:
    """Token ids as float32 (B, length): truncated, or right-padded with ``pad_id``."""
    out = np.full((len(token_ids), length), pad_id, np.float32)
    for i, ids in enumerate(token_ids):
        ids = list(ids)[:length]
        out[i, : len(ids)] = ids
    return out


def write_answers(out: Path, records: Sequence[dict[str, Any]], *, model: str) -> Path:
    """Rewrite ``answers.jsonl`` beside ``out`` atomically: this run's lines replace earlier lines
    of the same feature file; lines of other feature files are kept."""
    path = out.parent / "answers.jsonl"
    kept: list[str] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("features") != out.name:
                    kept.append(line)
            except ValueError:
                continue
    lines = kept + [json.dumps({"name": r["name"], "prompt": r["prompt"], "answer": r["answer"],
                                "model": model, "features": out.name}, ensure_ascii=False) for r in records]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    os.replace(tmp, path)
    return path


def _layout(feature: str, prompts: int) -> str:
    return {"yesno": f"{prompts} x [P(yes), P(no)]",
            "embedding": f"{prompts} x mean-pooled answer embedding",
            "tokens": f"{prompts} x generated token ids (padded/truncated)"}[feature]


def _result(out: Path, merged: Any, missing: list[str], seconds: float) -> ExtractResult:
    if merged is None:
        return ExtractResult(out, main=False)
    return ExtractResult(out, len(merged.names), int(merged.features.shape[1]), seconds, missing, merged.per_process)
