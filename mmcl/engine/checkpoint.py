"""Checkpoints for exact resume, and the exported skeleton-only model.

A run directory holds ``checkpoints/epoch_N/``: the full Accelerate state after epoch N
(model, optimizer, scheduler, RNG; ``accelerator.save_state``) plus ``trainer_state.json``
(epoch, step, best epoch, the model spec). Each is written into a temporary folder that is
renamed into place only when complete, so a crash never leaves a half checkpoint that
``--resume`` would pick up. The last ``keep`` epochs and the best one are kept.

``model.safetensors`` holds only the skeleton model's weights; its safetensors metadata
holds the spec (class count, layout, stream, channels, persons, window, recipe) that
``mmcl test --weights`` needs to rebuild it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmcl import __version__
from mmcl.errors import MMCLError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FORMAT = "mmcl-skeleton-model"
_EPOCH_DIR = re.compile(r"epoch_(\d+)")


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"epoch_{epoch}"


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Complete checkpoints of a run, by epoch (temporary folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    found = {}
    if root.is_dir():
        for p in root.iterdir():
            m = _EPOCH_DIR.fullmatch(p.name)
            if m and (p / STATE_FILE).is_file():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[max(found)] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(ckpt) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise MMCLError(f"{ckpt}: unreadable checkpoint state {STATE_FILE} ({exc})") from None


def save_checkpoint(accelerator: Any, run_dir: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Save the Accelerate state and ``state`` for ``epoch``, atomically, from all processes."""
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
        if final.exists():  # re-running an epoch after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(run_dir: Path, keep: int, best_epoch: int | None) -> None:
    """Delete all but the last ``keep`` checkpoints and the best one (main process only)."""
    found = list_checkpoints(run_dir)
    keep_epochs = set(list(found)[-max(keep, 1):])
    if best_epoch:
        keep_epochs.add(best_epoch)
    for epoch, path in found.items():
        if epoch not in keep_epochs:
            shutil.rmtree(path, ignore_errors=True)


# -- the exported skeleton model ----------------------------------------------------------


def export_model(model: torch.nn.Module, path: Path, spec: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights to ``path`` (safetensors) with ``spec`` in the metadata, atomically."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": MODEL_FORMAT, "mmcl_version": __version__, "spec": json.dumps(spec)}
    for key, value in (extra or {}).items():
        meta[key] = json.dumps(value)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata with ``spec`` decoded) of an exported model."""
    path = Path(path)
    if not path.is_file():
        raise MMCLError(f"model file {path} does not exist (a run writes it as <run>/model.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise MMCLError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != MODEL_FORMAT or "spec" not in meta:
        raise MMCLError(
            f"{path}: not an mmcl skeleton model (no '{MODEL_FORMAT}' metadata); "
            "export one with `mmcl train`, which writes <run>/model.safetensors"
        )
    decoded: dict[str, Any] = {k: v for k, v in meta.items() if k not in ("spec",)}
    decoded["spec"] = json.loads(meta["spec"])
    for key in list(decoded):
        if key not in ("format", "mmcl_version", "spec"):
            try:
                decoded[key] = json.loads(decoded[key])
            except (TypeError, ValueError):
                pass
    return tensors, decoded


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, where: str) -> None:
    """Load a state dict, turning shape/key mismatches into a clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            parts.append(f"shape {wrong[:3]}")
        raise MMCLError(f"{where}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors)
