"""Typed training configs: dataclasses loaded from YAML, with ``base:`` inheritance and ``--set``.

A config file names a base (``base: ../base.yaml``, relative to the file) and overrides what
differs; bases are merged deeply, the file's own values last. ``--set a.b=v`` overrides any value
after that (``v`` is parsed as YAML, so ``--set data.crop_range=[0.6,1.0]`` works). A key that
is not in the dataclasses is an error naming it, its section, the valid keys and the closest
match, so a typo never silently falls back to a default.

This module imports neither torch nor the rest of mmcl, so commands that only read configs stay
light.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from mmcl.errors import MMCLError


@dataclass
class DataConfig:
    """Which dataset, split and stream, and how clips are cut and augmented."""

    path: str = "data/synthetic"  # a prepared dataset directory (`mmcl prepare`), relative to the cwd
    benchmark: str = "xsub"  # split name in the dataset's splits.json
    stream: str = "joint"  # joint | bone | joint_motion | bone_motion
    recipe: Literal["ntu", "ucla"] = "ntu"  # clip cutting + augmentation recipe (see the issue)
    window: int = 64  # frames per clip
    num_person: int = 2  # actor slots fed to the model
    pad_second_actor: bool = False  # copy actor 1 into an empty slot 2 (CTR-GCN's NTU120 data)
    crop_range: tuple[float, float] = (0.5, 1.0)  # NTU training crop ratio range
    test_crop: float = 0.95  # NTU test centre-crop ratio
    rotate: float = 0.3  # NTU training rotation range per axis (radians)
    repeat: int = 1  # repeat the training set per epoch (NW-UCLA: 5)
    num_workers: int = 2  # DataLoader worker processes per training process


@dataclass
class FeaturesConfig:
    """Per-sample co-learning inputs, joined to samples by name (training only)."""

    text: str | None = None  # text feature file (.npz, `mmcl extract-text`) for FRM
    rgb: str | None = None  # cached RGB feature file (.npz) for FAM
    rgb_end_to_end: bool = False  # train the vision encoder on RGB strips instead (slow)
    image_encoder: str | None = None  # local Transformers image model for rgb_end_to_end
    trust_remote_code: bool = False  # only for encoders whose code you trust


@dataclass
class ModelConfig:
    """The skeleton backbone (CTR-GCN) and which co-learning heads train with it."""

    dropout: float = 0.0
    fam: bool = False  # feature alignment with RGB (needs features.rgb or rgb_end_to_end)
    frm: bool = False  # feature refinement with text (needs features.text)


@dataclass
class LossConfig:
    """Loss = ce·CE(logits) + refine·CE(refined) + contrast·contrastive (MMCL: 1, 0.2, 0.1)."""

    ce: float = 1.0
    refine: float = 0.2
    contrast: float = 0.1
    temperature: float = 0.4  # FAM contrastive temperature


@dataclass
class OptimConfig:
    """SGD. ``lr`` is stated for ``reference_batch`` samples per update and scaled linearly
    with the real global batch (batch_size × processes × grad_accum)."""

    lr: float = 0.1
    reference_batch: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-4


@dataclass
class ScheduleConfig:
    """Per-epoch learning rate, as CTR-GCN: linear warm-up, then ×lr_decay at each step epoch."""

    epochs: int = 65
    warmup_epochs: int = 5
    lr_steps: list[int] = field(default_factory=lambda: [35, 55])
    lr_decay: float = 0.1


@dataclass
class TrainConfig:
    """Batching, run directory and logging."""

    batch_size: int = 64  # per process
    grad_accum: int = 1
    eval_batch_size: int = 64  # per process
    output_dir: str | None = None  # default: runs/<config path below configs/, dashed>
    max_steps_per_epoch: int | None = None  # cap on optimizer updates per epoch (smoke runs)
    eval_every: int = 1  # test every N epochs (and always after the last)
    log_every: int = 50  # optimizer updates between metrics.jsonl step lines
    keep_checkpoints: int = 2  # last K epoch checkpoints kept (the best is always kept)
    model_from: Literal["best", "last"] = "best"  # epoch whose weights/scores the run exports
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None  # None: the Accelerate config
    keep_freed_memory: bool = True  # keep freed host memory in the heap for reuse (mmcl.heap)
    skip_empty_persons: bool = True  # on CPU (fp32): empty person slots of a batch run as one stream
    sync_batchnorm: bool = False  # several processes: BatchNorm statistics over the global batch


@dataclass
class Config:
    """A whole training run. Everything that changes a result is named here."""

    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict (tuples become lists)."""
        return _plain(asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def get(self, dotted: str) -> Any:
        """A value by dotted key, e.g. ``cfg.get("optim.lr")``."""
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj


# -- loading -------------------------------------------------------------------------------


def load_config(path: Path | str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (following ``base:``), apply ``--set`` overrides, and type-check."""
    raw: dict[str, Any] = _read_with_bases(Path(path), chain=()) if path is not None else {}
    for item in overrides:
        single: dict[str, Any] = {}
        _apply_override(single, item)
        from_dict(single, source=f"--set {item}")  # names a bad key or value by its --set
        _apply_override(raw, item)
    return from_dict(raw, source=str(path) if path is not None else "config")


def from_dict(raw: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build a :class:`Config` from nested dicts, rejecting unknown keys and wrong types."""
    return _build(Config, raw, section="", source=source)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=v`` into (["a", "b"], YAML-parsed v)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise MMCLError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise MMCLError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def default_output_dir(config_path: Path | str | None) -> str:
    """``runs/ntu60-xsub-joint`` for ``configs/ntu60/xsub/joint.yaml``."""
    if config_path is None:
        return "runs/run"
    p = Path(config_path).with_suffix("")
    parts = list(p.parts)
    if "configs" in parts:
        parts = parts[len(parts) - parts[::-1].index("configs") :]
    else:
        parts = parts[-3:]
    return "runs/" + "-".join(x for x in parts if x not in ("", ".", ".."))


def diff_configs(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs: {key: (a_value, b_value)}."""
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return {k: (flat_a.get(k), flat_b.get(k)) for k in flat_a if flat_a.get(k) != flat_b.get(k)}


# -- internals -----------------------------------------------------------------------------


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise MMCLError(f"config {path}: base chain loops back to itself ({' -> '.join(map(str, chain))})")
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise MMCLError(f"config file {path} does not exist{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MMCLError(f"config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise MMCLError(f"config {path}: expected a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = _deep_merge(merged, _read_with_bases(path.parent / base, chain + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    keys, value = parse_override(item)
    node = raw
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _build(cls: type, raw: Any, *, section: str, source: str) -> Any:
    where = f"section '{section}'" if section else "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise MMCLError(f"{source}: {where} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            dotted = f"{section}.{key}" if section else str(key)
            raise MMCLError(
                f"{source}: unknown key '{dotted}' in {where}{hint} valid keys: {', '.join(valid)}"
            )
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        dotted = f"{section}.{f.name}" if section else f.name
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            kwargs[f.name] = _build(kind, raw[f.name], section=dotted, source=source)
        else:
            kwargs[f.name] = _coerce(raw[f.name], kind, dotted, source)
    return cls(**kwargs)


_YAML_BOOL_WORDS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """Check ``value`` against a type annotation, converting lists/ints where unambiguous."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)

    def bad(expected: str) -> MMCLError:
        return MMCLError(f"{source}: '{key}' must be {expected}, got {value!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key, source)
            except MMCLError:
                continue
        raise bad(" or ".join(_describe(a) for a in args))
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off as false and yes/on as true
            value = next((a for a in args if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {_describe(args[0])}")
        return [_coerce(v, args[0], key, source) for v in value]
    raise TypeError(f"config type {kind!r} of {key} is not supported")  # a programming error


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
