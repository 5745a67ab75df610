"""FAM trained end to end on RGB strips (``features.rgb_end_to_end``), through the real engine.

A real (tiny) Transformers ViT and its image processor saved to disk, a real dataset written
with DatasetWriter, real JPEG strips in ``<dataset>/rgb/``, real Accelerate training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import CPU_ONLY_ENV
from mmcl.config import load_config
from mmcl.data.store import DatasetWriter, Sample, open_dataset
from mmcl.data.strips import StripLoader
from mmcl.engine import build
from mmcl.engine.checkpoint import list_checkpoints
from mmcl.errors import MMCLError
from mmcl.graphs import Layout

REPO = Path(__file__).resolve().parents[1]
TOY = Layout("toy", ("root", "spine", "head", "arm_l", "arm_r"), ((1, 0), (2, 1), (3, 1), (4, 1)))
CLASSES = ("wave", "nod")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_dataset(path: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """A tiny 2-class dataset with one coloured RGB strip (3 frames side by side) per sample."""
    rng = np.random.default_rng(0)
    train, test = [], []
    with DatasetWriter(path, name="toy", layout=TOY, num_person=1, channels=3, class_names=CLASSES,
                       has_colors=False, meta_fields=["subject"], source={"test": True}) as w:
        for i in range(n_train + n_test):
            name, label = f"s{i:03d}", i % 2
            x = rng.normal(0, 0.3, (16, 1, 5, 3)).astype(np.float32)
            x[:, 0, 3 + label, 1] += np.linspace(0, 1, 16, dtype=np.float32)
            w.add(Sample(name, label, x, bodies=1, meta={"subject": 1 if i < n_train else 2}))
            (train if i < n_train else test).append(name)
        w.finish({"xsub": {"train": train, "test": test}})
    (path / "rgb").mkdir()
    for i, name in enumerate(train + test):
        strip = rng.integers(0, 255, (20, 60, 3), dtype=np.uint8)
        strip[..., i % 3] = 200 if i % 2 else 30  # the class shows in the colour
        Image.fromarray(strip).save(path / "rgb" / f"{name}.jpg")
    return path


def make_vit(path: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def write_config(path: Path, dataset: Path, encoder: Path) -> Path:
    cfg = {
        "base": str(REPO / "configs" / "base.yaml"),
        "seed": 3,
        "data": {"path": str(dataset), "benchmark": "xsub", "window": 8, "num_person": 1, "num_workers": 0,
                 "recipe": "ntu"},
        "features": {"rgb_end_to_end": True, "image_encoder": str(encoder)},
        "model": {"fam": True},
        "optim": {"lr": 0.1, "reference_batch": 4},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "lr_steps": [5]},
        "train": {"batch_size": 4, "eval_batch_size": 4, "log_every": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    data, vit = make_dataset(tmp / "toy"), make_vit(tmp / "vit")
    return {"tmp": tmp, "data": data, "vit": vit, "config": write_config(tmp / "toy.yaml", data, vit)}


def test_strip_loader_gives_processed_encoder_input(setup):
    loader = StripLoader.for_dataset(setup["data"], str(setup["vit"]))
    pixels = loader("s001")
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    assert -1.0 - 1e-5 <= pixels.min() and pixels.max() <= 1.0 + 1e-5  # ViT mean/std 0.5 normalisation
    assert not torch.equal(pixels, loader("s002"))


def test_end_to_end_training_trains_the_encoder_and_exports_the_skeleton_only(setup):
    from accelerate.state import AcceleratorState, GradientState

    from mmcl.engine.trainer import train

    run = setup["tmp"] / "run"
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        result = train(load_config(setup["config"]), run)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert result.epochs == 1

    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == 2  # 8 training samples, batch 4
    for r in steps:
        assert np.isfinite(r["contrastive"]) and r["contrastive"] > 0
        assert r["loss"] == pytest.approx(r["ce"] + 0.1 * r["contrastive"], rel=1e-5)

    # the encoder's weights are part of the training state and changed
    from mmcl.models.vision import load_image_encoder

    before = load_image_encoder(str(setup["vit"])).model.state_dict()
    trained = load_file(str(list_checkpoints(run)[1] / "model.safetensors"))
    encoder = {k.split("rgb_encoder.model.", 1)[1]: v for k, v in trained.items() if k.startswith("rgb_encoder.model.")}
    assert set(encoder) == set(before)
    changed = [k for k in before if not torch.equal(before[k], encoder[k])]
    assert "embeddings.patch_embeddings.projection.weight" in changed
    assert len(changed) > len(before) // 2

    # model.safetensors: the bare skeleton model only
    exported = load_file(str(run / "model.safetensors"))
    assert not [k for k in exported if "rgb_encoder" in k or k.startswith(("fam.", "frm."))]
    spec = build.model_spec(load_config(setup["config"]), open_dataset(setup["data"]))
    assert set(exported) == set(build.build_skeleton_model(spec).state_dict())


def test_missing_strip_is_a_clear_error(setup):
    data = setup["tmp"] / "toy_missing"
    shutil.copytree(setup["data"], data)
    (data / "rgb" / "s003.jpg").unlink()
    cfg = load_config(setup["config"], [f"data.path={data}"])
    with pytest.raises(MMCLError, match=r"s003.*mmcl prepare .*--videos"):
        build.build_data(cfg)

    loader = StripLoader.for_dataset(data, str(setup["vit"]))
    with pytest.raises(MMCLError, match=r"sample s003: RGB strip .*s003\.jpg is missing.*--frames"):
        loader("s003")


def test_end_to_end_needs_an_encoder(setup):
    cfg = load_config(setup["config"], ["features.image_encoder=null"])
    with pytest.raises(MMCLError, match="features.image_encoder is null"):
        build.build_data(cfg)


def test_end_to_end_under_two_process_ddp_and_bf16(setup):
    """The trained encoder under real DDP (two gloo processes on CPU) with bf16 autocast: every
    parameter that gets a gradient is reduced (a ViT pooler that gets none must not stall DDP),
    the loss stays finite and the encoder trains with fp32 master weights."""
    run = setup["tmp"] / "ddp"
    env = {**os.environ, **CPU_ONLY_ENV, "PYTHONUNBUFFERED": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "bf16", "--dynamo_backend", "no", "--main_process_port", "29541",
         "-m", "mmcl", "train", "--config", str(setup["config"]), "--output-dir", str(run),
         "--set", "schedule.epochs=2", "--set", "train.batch_size=2"],
        cwd=setup["tmp"], env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    session = json.loads((run / "run.json").read_text())["sessions"][0]
    assert session["num_processes"] == 2 and session["global_batch"] == 4
    assert session["mixed_precision"] == "bf16"
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) and r["contrastive"] > 0 for r in steps)
    # the checkpoint (rank 0's weights) moved the encoder away from its start
    from mmcl.models.vision import load_image_encoder

    before = load_image_encoder(str(setup["vit"])).model.state_dict()
    trained = load_file(str(list_checkpoints(run)[2] / "model.safetensors"))
    key = "rgb_encoder.model.embeddings.patch_embeddings.projection.weight"
    assert trained[key].dtype == torch.float32  # fp32 master weights under autocast
    assert not torch.equal(trained[key], before["embeddings.patch_embeddings.projection.weight"])
    assert (list_checkpoints(run)[2] / "random_states_1.pkl").is_file()  # rank 1 ran
