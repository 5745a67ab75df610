"""Offline-first model loading: local folders, the Hugging Face cache, clear errors, no surprises.

* A local folder is loaded as it is (``local_files_only``), so ``HF_HUB_OFFLINE=1`` just works.
* A hub id (``Salesforce/blip-vqa-base``) is looked up in the local Hugging Face cache only,
  unless the user passes ``--allow-download``.
* A missing model is an error that says how to download it.
* Models whose config or processor points at custom code (``auto_map``) need an explicit
  ``--trust-remote-code``; the check runs before Transformers is asked to load anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from mmcl.errors import MMCLError

T = TypeVar("T")

_CODE_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def download_hint(model_id: str) -> str:
    """The command that fetches a hub model into a local folder."""
    local = f"models/{model_id.rsplit('/', 1)[-1]}"
    return (f"download it once with `huggingface-cli download {model_id} --local-dir {local}` "
            f"(or `hf download ...`) and pass --model {local}")


def resolve_model(model: str, *, allow_download: bool, default_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """Where to load ``model`` from, and the ``from_pretrained`` keyword arguments that keep it
    offline. Raises MMCLError for a folder that does not exist or is not a model."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MMCLError(f"{path}: no config.json, so not a Transformers model folder "
                            "(expected the output of `save_pretrained` or `huggingface-cli download`)")
        return str(path), {"local_files_only": True}
    if path.exists():
        raise MMCLError(f"{path} is a file; --model takes a model folder or a hub id")
    if not _HUB_ID.match(model):
        hint = download_hint(default_id) if default_id else "download a model into that folder first"
        raise MMCLError(f"model folder {model} does not exist; {hint}")
    return model, {} if allow_download else {"local_files_only": True}


def load_or_explain(what: str, model: str, kwargs: dict[str, Any], loader: Callable[[], T]) -> T:
    """Run ``loader``; turn "not found" errors into an MMCLError that says how to get the model."""
    try:
        return loader()
    except OSError as exc:  # not in the cache, no network, incomplete folder
        offline = kwargs.get("local_files_only")
        where = "in the local Hugging Face cache" if offline and not Path(model).is_dir() else f"at {model}"
        hint = download_hint(model) if _HUB_ID.match(model) and not Path(model).exists() else (
            "check that the folder holds the complete model (config, weights, processor files)")
        extra = " (nothing is downloaded unless you pass --allow-download)" if offline and not Path(model).is_dir() else ""
        raise MMCLError(f"cannot load the {what} {model}: not found {where}{extra}; {hint}. [{exc}]") from exc


def check_remote_code(model: str, kwargs: dict[str, Any], trust_remote_code: bool) -> None:
    """Refuse a model that ships its own Python code unless the user asked to run it."""
    if trust_remote_code:
        return
    for name in _CODE_FILES:
        data = _read_json(model, name, kwargs)
        if data and data.get("auto_map"):
            raise MMCLError(
                f"{model}: {name} asks to run the model's own Python code (auto_map: "
                f"{', '.join(sorted(data['auto_map']))}). mmcl runs such code only when you pass "
                "--trust-remote-code; read the code first, it runs with your permissions."
            )


def _read_json(model: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    path = Path(model) / name
    if not path.is_file() and _HUB_ID.match(model) and not Path(model).exists():
        try:
            from transformers.utils import cached_file

            found = cached_file(model, name, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False, **kwargs)
        except OSError:
            found = None
        path = Path(found) if found else path
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MMCLError(f"{path}: unreadable JSON ({exc})") from exc


def pick_dtype(name: str, device: Any) -> Any:
    """``auto``: bfloat16 on a GPU that supports it, else float16 on GPU, float32 on CPU."""
    import torch

    if name != "auto":
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
        except KeyError:
            raise MMCLError(f"--dtype {name!r}: choose auto, float32, bfloat16 or float16") from None
    if getattr(device, "type", str(device)) == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype`` since Transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}


def slug(model: str) -> str:
    """A short file-name-safe name for a model id or folder (``Salesforce/blip-vqa-base`` ->
    ``blip-vqa-base``)."""
    base = Path(model.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base)
