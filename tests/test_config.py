"""Typed configs: YAML bases, --set overrides, clear errors, and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmcl.config import Config, default_output_dir, diff_configs, from_dict, load_config
from mmcl.errors import MMCLError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_bases_merge_deeply_relative_to_the_file(tmp_path):
    write(tmp_path / "base.yaml", {"seed": 3, "optim": {"lr": 0.1, "momentum": 0.8}, "data": {"window": 32}})
    write(tmp_path / "ds" / "base.yaml", {"base": "../base.yaml", "optim": {"lr": 0.05}})
    leaf = write(tmp_path / "ds" / "split" / "bone.yaml",
                 {"base": "../base.yaml", "data": {"stream": "bone"}})
    cfg = load_config(leaf)
    assert cfg.seed == 3
    assert cfg.optim.lr == 0.05 and cfg.optim.momentum == 0.8  # merged, not replaced
    assert cfg.data.window == 32 and cfg.data.stream == "bone"
    assert cfg.data.recipe == "ntu"  # dataclass default where no file sets it


def test_set_overrides_any_value_with_yaml_parsing(tmp_path):
    leaf = write(tmp_path / "c.yaml", {"optim": {"lr": 0.1}})
    cfg = load_config(leaf, ["optim.lr=0.02", "data.crop_range=[0.6, 0.9]", "schedule.lr_steps=[3]",
                             "train.max_steps_per_epoch=2", "features.text=null", "model.fam=true"])
    assert cfg.optim.lr == 0.02
    assert cfg.data.crop_range == (0.6, 0.9)
    assert cfg.schedule.lr_steps == [3]
    assert cfg.train.max_steps_per_epoch == 2
    assert cfg.model.fam is True
    # YAML 1.1 reads `no` as false: Accelerate's word for "no mixed precision" still works
    assert load_config(leaf, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    (tmp_path / "no.yaml").write_text("train:\n  mixed_precision: no\n")
    assert load_config(tmp_path / "no.yaml").train.mixed_precision == "no"
    with pytest.raises(MMCLError, match="mixed_precision.*one of 'no', 'fp16', 'bf16'"):
        load_config(leaf, ["train.mixed_precision=yes"])


def test_unknown_key_names_section_valid_keys_and_suggestion(tmp_path):
    leaf = write(tmp_path / "c.yaml", {"optim": {"lrr": 0.1}})
    with pytest.raises(MMCLError) as err:
        load_config(leaf)
    msg = str(err.value)
    assert "optim.lrr" in msg and "section 'optim'" in msg and "did you mean 'lr'" in msg
    assert "reference_batch" in msg and "weight_decay" in msg  # lists the valid keys
    assert str(leaf) in msg


def test_unknown_section_and_bad_set_are_named(tmp_path):
    leaf = write(tmp_path / "c.yaml", {"optimizer": {"lr": 0.1}})
    with pytest.raises(MMCLError, match="did you mean 'optim'"):
        load_config(leaf)
    with pytest.raises(MMCLError, match=r"--set train\.batchsize=3.*did you mean 'batch_size'"):
        load_config(None, ["train.batchsize=3"])
    with pytest.raises(MMCLError, match="expected KEY=VALUE"):
        load_config(None, ["train.batch_size"])


def test_wrong_types_are_errors(tmp_path):
    with pytest.raises(MMCLError, match="'train.batch_size' must be an integer"):
        from_dict({"train": {"batch_size": "64"}})
    with pytest.raises(MMCLError, match="'data.recipe' must be one of 'ntu', 'ucla'"):
        from_dict({"data": {"recipe": "kinetics"}})
    with pytest.raises(MMCLError, match="'data.crop_range' must be a list of 2"):
        from_dict({"data": {"crop_range": [0.5]}})
    with pytest.raises(MMCLError, match="'model.fam' must be true or false"):
        from_dict({"model": {"fam": "yes"}})
    assert from_dict({"optim": {"lr": 1}}).optim.lr == 1.0  # ints are fine where floats are expected


def test_missing_and_looping_bases(tmp_path):
    leaf = write(tmp_path / "c.yaml", {"base": "nope.yaml"})
    with pytest.raises(MMCLError, match="nope.yaml does not exist"):
        load_config(leaf)
    a = write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(MMCLError, match="loops"):
        load_config(a)


def test_resolved_config_round_trips():
    cfg = load_config(CONFIGS / "ntu120" / "xset" / "bone_motion.yaml", ["seed=7"])
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert diff_configs(cfg, again) == {}
    other = from_dict({**cfg.to_dict(), "seed": 8})
    assert diff_configs(cfg, other) == {"seed": (7, 8)}


def test_default_output_dir_names_the_config():
    assert default_output_dir("configs/ntu60/xsub/joint.yaml") == "runs/ntu60-xsub-joint"
    assert default_output_dir("/abs/x/configs/ucla/xview/bone.yaml") == "runs/ucla-xview-bone"


STREAMS = ("joint", "bone", "joint_motion", "bone_motion")


@pytest.mark.parametrize("dataset,benchmarks", [
    ("ntu60", ("xsub", "xview")), ("ntu120", ("xsub", "xset")), ("ucla", ("xview",)),
    ("utd-mhad", ("xsub",)), ("synthetic", ("xsub",)),
])
def test_every_benchmark_has_one_config_per_stream(dataset, benchmarks):
    for bench in benchmarks:
        for stream in STREAMS:
            cfg = load_config(CONFIGS / dataset / bench / f"{stream}.yaml")
            assert cfg.data.benchmark == bench and cfg.data.stream == stream


def test_published_recipes():
    ntu60 = load_config(CONFIGS / "ntu60" / "xview" / "joint.yaml")
    assert (ntu60.optim.lr, ntu60.optim.reference_batch, ntu60.train.batch_size) == (0.1, 64, 64)
    assert (ntu60.optim.momentum, ntu60.optim.nesterov, ntu60.optim.weight_decay) == (0.9, True, 4e-4)
    assert (ntu60.schedule.epochs, ntu60.schedule.lr_steps, ntu60.schedule.warmup_epochs) == (65, [35, 55], 5)
    assert ntu60.data.pad_second_actor is False and ntu60.data.window == 64

    ntu120 = load_config(CONFIGS / "ntu120" / "xsub" / "joint.yaml")
    assert (ntu120.train.batch_size, ntu120.optim.reference_batch, ntu120.optim.lr) == (200, 200, 0.1)
    assert (ntu120.schedule.epochs, ntu120.schedule.lr_steps, ntu120.optim.weight_decay) == (110, [90, 100], 4e-4)
    assert ntu120.data.pad_second_actor is True

    ucla = load_config(CONFIGS / "ucla" / "xview" / "joint.yaml")
    assert (ucla.train.batch_size, ucla.optim.reference_batch, ucla.optim.lr, ucla.optim.weight_decay) == (16, 16, 0.1, 1e-4)
    assert (ucla.schedule.epochs, ucla.schedule.lr_steps, ucla.schedule.warmup_epochs) == (65, [50], 5)
    assert (ucla.data.recipe, ucla.data.window, ucla.data.num_person, ucla.data.repeat) == ("ucla", 52, 1, 5)


def test_base_yaml_lists_every_key():
    """configs/base.yaml documents the whole schema: it must name every key of Config."""
    raw = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    assert set(raw) == set(Config().to_dict())
    for section, values in Config().to_dict().items():
        if isinstance(values, dict):
            assert set(raw[section]) == set(values), section
    assert from_dict(raw) == Config()  # and its values are the dataclass defaults
