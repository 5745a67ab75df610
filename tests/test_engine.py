"""The training / evaluation engine, end to end on tiny datasets, on CPU.

Real components only: datasets written with the real DatasetWriter, the real CTR-GCN and
co-learning heads (tiny inputs, not a tiny architecture), real Accelerate, real 2-process
DDP (gloo on CPU), real score files, real crashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import CPU_ONLY_ENV
from mmcl.cli import main as cli
from mmcl.config import load_config
from mmcl.data.features import save_features
from mmcl.data.store import DatasetWriter, Sample
from mmcl.engine import build
from mmcl.engine.checkpoint import list_checkpoints
from mmcl.engine.evaluate import evaluate_weights
from mmcl.errors import MMCLError
from mmcl.graphs import Layout
from mmcl.heap import glibc_malloc
from mmcl.models.inference import missing_compile_toolchain
from mmcl.scores import load_scores

REPO = Path(__file__).resolve().parents[1]

# A 6-joint toy skeleton keeps CTR-GCN (full width, 10 units) cheap on CPU.
TOY = Layout("toy", ("root", "spine", "head", "arm_l", "arm_r", "leg"),
             ((1, 0), (2, 1), (3, 1), (4, 1), (5, 0)))
CLASSES = ("raise left", "raise right", "nod", "kick")


def _sample(name: str, label: int, subject: int, rng: np.random.Generator) -> Sample:
    """A learnable clip: the class moves one joint along a class-specific axis."""
    t = int(rng.integers(14, 30))
    pose = np.array([[0, 0, 0], [0, .5, 0], [0, 1, 0], [-.4, .6, 0], [.4, .6, 0], [0, -.8, 0]], np.float32)
    x = np.repeat(pose[None], t, 0) + rng.normal(0, 0.02, (t, 6, 3)).astype(np.float32)
    joint, axis = [(3, 1), (4, 1), (2, 2), (5, 0), (1, 0)][label % 5]
    x[:, joint, axis] += np.sin(np.linspace(0, np.pi * (1 + label), t)).astype(np.float32) * 0.5
    return Sample(name, label, x[:, None], bodies=1, meta={"subject": subject})


def make_dataset(path: Path, *, n_train: int = 16, n_test: int = 11, classes=CLASSES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, name="toy", layout=TOY, num_person=1, channels=3, class_names=classes,
                       has_colors=False, meta_fields=["subject"], source={"test": True}) as w:
        train, test = [], []
        for i in range(n_train + n_test):
            name = f"s{i:03d}"
            w.add(_sample(name, i % len(classes), 1 if i < n_train else 2, rng))
            (train if i < n_train else test).append(name)
        w.finish({"xsub": {"train": train, "test": test}})
    return path


def write_config(path: Path, dataset: Path, **sections) -> Path:
    """A tiny run: window 12, batch 4, 2 epochs, no workers; sections override."""
    cfg = {
        "base": str(REPO / "configs" / "base.yaml"),
        "seed": 5,
        "data": {"path": str(dataset), "benchmark": "xsub", "window": 12, "num_person": 1, "num_workers": 0,
                 "recipe": "ntu"},
        "optim": {"lr": 0.05, "reference_batch": 4},
        "schedule": {"epochs": 2, "warmup_epochs": 1, "lr_steps": [2]},
        "train": {"batch_size": 4, "eval_batch_size": 4, "log_every": 1},
    }
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values) if isinstance(values, dict) else cfg.__setitem__(key, values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def reset_accelerate() -> None:
    """One process normally runs one training; tests run several, so clear Accelerate's singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_cli(*args: str) -> "click.testing.Result":  # noqa: F821
    reset_accelerate()
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    reset_accelerate()
    return result


def train_run(config: Path, run_dir: Path, *sets: str, resume: bool = False):
    from mmcl.engine.trainer import train

    reset_accelerate()
    try:
        return train(load_config(config, sets), run_dir, resume=resume)
    finally:
        reset_accelerate()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine, two threads waiting on each other make
    each tiny step many times slower (and the results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def features(toy: Path, tmp_path_factory) -> dict[str, Path]:
    """Text and RGB feature files for the training samples, in shuffled row order."""
    from mmcl.data.store import open_dataset

    ds = open_dataset(toy)
    names = list(reversed(ds.split("xsub", "train")))  # joined by name, not by order
    folder = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(1)
    save_features(folder / "text.npz", names, rng.normal(size=(len(names), 16)), {"kind": "text"})
    save_features(folder / "rgb.npz", names, rng.normal(size=(len(names), 12)), {"kind": "rgb"})
    save_features(folder / "rgb_partial.npz", names[2:], rng.normal(size=(len(names) - 2, 12)), {"kind": "rgb"})
    return {"text": folder / "text.npz", "rgb": folder / "rgb.npz", "partial": folder / "rgb_partial.npz",
            "missing": names[:2]}


# -- a full run and its run directory -------------------------------------------------------


@pytest.fixture(scope="module")
def mmcl_run(toy, features, tmp_path_factory) -> Path:
    """A 2-epoch run with both co-learning heads, through the `mmcl train` command."""
    tmp = tmp_path_factory.mktemp("run")
    config = write_config(tmp / "toy.yaml", toy, model={"fam": True, "frm": True},
                          features={"text": str(features["text"]), "rgb": str(features["rgb"])})
    result = run_cli("train", "--config", str(config), "--output-dir", str(tmp / "run"))
    assert result.exit_code == 0, result.output
    assert "after the last epoch (2), best" in result.output and "top-5" in result.output
    return tmp / "run"


def test_run_directory_follows_the_contract(mmcl_run, toy):
    run = mmcl_run
    for name in ("config.yaml", "run.json", "metrics.jsonl", "model.safetensors", "scores.npz",
                 "report.txt", "report.json", "training_curve.png", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    saved = load_config(run / "config.yaml")
    assert saved.model.fam and saved.model.frm and saved.data.path == str(toy)
    session = json.loads((run / "run.json").read_text())["sessions"][0]
    assert saved.train.keep_freed_memory and session["freed_memory_kept"] is glibc_malloc()  # mmcl.heap, on by default
    assert saved.train.skip_empty_persons  # on by default

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert len(steps) == 2 * 4  # 16 samples / batch 4, logged every update
    assert all(np.isfinite(r["loss"]) for r in steps)
    # both co-learning heads trained: their losses are part of the total
    for r in steps:
        assert r["loss"] == pytest.approx(r["ce"] + 0.2 * r["refined_ce"] + 0.1 * r["contrastive"], rel=1e-5)
    assert all(r["test_samples"] == 11 for r in epochs)

    # full Accelerate state per epoch, written atomically (no temporary folders left)
    ckpts = list_checkpoints(run)
    assert sorted(ckpts) == [1, 2]
    for files in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                  "trainer_state.json"):
        assert (ckpts[2] / files).is_file(), files
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]

    # model.safetensors: the bare skeleton model (no FAM/FRM heads) plus its spec
    exported = weights(run / "model.safetensors")
    training_state = weights(ckpts[2] / "model.safetensors")
    def in_export(key: str) -> bool:
        return any(key == k or key.endswith("." + k) for k in exported)

    assert [k for k in training_state if not in_export(k)]  # the heads trained, and were dropped
    assert all(any(t == k or t.endswith("." + k) for t in training_state) for k in exported)
    spec = json.loads(safe_open(str(run / "model.safetensors"), "pt").metadata()["spec"])
    skeleton = build.build_skeleton_model(spec)
    assert set(exported) == set(skeleton.state_dict())
    assert spec["num_class"] == 4 and spec["layout"]["name"] == "toy" and spec["stream"] == "joint"

    # the score file: every test sample exactly once, logits for 4 classes, labels from the dataset
    scores = load_scores(run / "scores.npz")
    assert sorted(scores.names.tolist()) == [f"s{i:03d}" for i in range(16, 27)]
    assert scores.scores.shape == (11, 4)
    assert scores.meta["benchmark"] == "xsub" and scores.meta["stream"] == "joint"
    assert scores.meta["class_names"] == list(CLASSES) and "mmcl_version" in scores.meta
    report = (run / "report.txt").read_text()
    assert "top-1" in report and "raise right" in report


def test_tensorboard_gets_the_metrics(mmcl_run):
    """With tensorboard installed (the test extra), Accelerate's tracker logs what metrics.jsonl holds."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[test])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({p.parent for p in mmcl_run.rglob("events.out.tfevents.*")})
    assert folders, f"no TensorBoard event file under {mmcl_run}"
    logs = [EventAccumulator(str(folder)).Reload() for folder in folders]  # scalars; hparams in a subfolder
    log = max(logs, key=lambda one: len(one.Tags()["scalars"]))
    scalars = log.Tags()["scalars"]
    assert {"step/loss", "step/contrastive", "epoch/train_loss", "epoch/test_top1"} <= set(scalars), scalars
    records = [json.loads(line) for line in (mmcl_run / "metrics.jsonl").read_text().splitlines()]
    tested = [r["test_top1"] for r in records if r["kind"] == "epoch"]
    assert [e.value for e in log.Scalars("epoch/test_top1")] == pytest.approx(tested)


def test_mmcl_test_reproduces_the_run_scores(mmcl_run, toy, tmp_path):
    out = tmp_path / "again.npz"
    result = run_cli("test", "--weights", str(mmcl_run / "model.safetensors"), "--data", str(toy),
                     "--benchmark", "xsub", "--out", str(out), "--batch-size", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output
    ours, theirs = load_scores(out), load_scores(mmcl_run / "scores.npz")
    order = {n: i for i, n in enumerate(theirs.names)}
    rows = [order[n] for n in ours.names]
    np.testing.assert_allclose(ours.scores, theirs.scores[rows], rtol=1e-4, atol=1e-5)
    assert (ours.labels == theirs.labels[rows]).all()
    assert (tmp_path / "again_report.txt").is_file() and (tmp_path / "again_confusion_matrix.png").is_file()

    by_run = run_cli("test", "--run", str(mmcl_run), "--device", "cpu")
    assert by_run.exit_code == 0, by_run.output
    np.testing.assert_allclose(load_scores(mmcl_run / "test" / "scores.npz").scores, ours.scores, atol=1e-5)


def test_mmcl_test_in_bf16(mmcl_run, toy, tmp_path):
    out = tmp_path / "bf16.npz"
    result = run_cli("test", "--run", str(mmcl_run), "--out", str(out), "--device", "cpu", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    ours, theirs = load_scores(out), load_scores(mmcl_run / "scores.npz")
    order = {n: i for i, n in enumerate(theirs.names)}
    fp32 = theirs.scores[[order[n] for n in ours.names]]
    assert ours.meta["precision"] == "bf16" and ours.scores.dtype == np.float32
    assert 0 < np.abs(ours.scores - fp32).max() <= 0.05 * np.abs(fp32).max()
    assert np.mean(ours.scores.argmax(1) == fp32.argmax(1)) >= 0.9


@pytest.mark.skipif(missing_compile_toolchain() is not None,
                    reason=f"torch.compile's CPU backend needs {missing_compile_toolchain()}")
def test_mmcl_test_compiled(mmcl_run, tmp_path, monkeypatch):
    # --compile runs the batches through inductor's compiled model, with the eager scores.
    import mmcl.models.inference as inference

    compiled = []
    real = inference.compile_for_inference
    monkeypatch.setattr(inference, "compile_for_inference", lambda model: compiled.append(model) or real(model))
    out = tmp_path / "compiled.npz"
    result = run_cli("test", "--run", str(mmcl_run), "--out", str(out), "--device", "cpu", "--compile")
    assert result.exit_code == 0, result.output
    assert len(compiled) == 1
    ours, theirs = load_scores(out), load_scores(mmcl_run / "scores.npz")
    order = {n: i for i, n in enumerate(theirs.names)}
    np.testing.assert_allclose(ours.scores, theirs.scores[[order[n] for n in ours.names]], rtol=1e-4,
                               atol=1e-4 * np.abs(theirs.scores).max())
    assert ours.meta["compiled"] is True


@pytest.mark.parametrize("native", [False, True])
def test_mmcl_test_warns_about_bf16_only_on_a_cpu_without_it(mmcl_run, tmp_path, monkeypatch, native):
    monkeypatch.setattr("mmcl.models.inference.bf16_is_fast", lambda: native)
    result = run_cli("test", "--run", str(mmcl_run), "--out", str(tmp_path / "s.npz"), "--device", "cpu",
                     "--precision", "bf16")
    assert result.exit_code == 0, result.output
    warned = "warning: this CPU has no native bf16 (AVX512-BF16 or AMX)" in result.output
    assert warned == (not native) and ("--precision fp32" in result.output) == (not native)


def test_mmcl_test_needs_no_transformers(mmcl_run, toy, tmp_path):
    code = (
        "import sys\n"
        "from mmcl.cli import main\n"
        f"main(['test', '--weights', {str(mmcl_run / 'model.safetensors')!r}, '--data', {str(toy)!r},"
        f" '--benchmark', 'xsub', '--out', {str(tmp_path / 's.npz')!r}], standalone_mode=False)\n"
        "bad = [m for m in ('transformers', 'accelerate') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120, env=env)


# -- exact resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [True, False])
def test_train_skip_empty_persons_reaches_the_model(toy, tmp_path, skip):
    cfg = load_config(write_config(tmp_path / "c.yaml", toy, train={"skip_empty_persons": skip}))
    data = build.build_data(cfg)
    model = build.build_model(cfg, build.model_spec(cfg, data.ds), data.feature_dims)
    assert model.backbone.skip_empty_persons is skip


def test_resume_after_a_crash_ends_with_the_same_weights(toy, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", toy, schedule={"epochs": 3, "warmup_epochs": 1, "lr_steps": [2]},
                          data={"rotate": 0.3, "crop_range": [0.5, 1.0]}, model={"dropout": 0.2})
    train_run(config, tmp_path / "straight")

    # the same run, killed in the middle of epoch 2 ...
    from mmcl.data.augment import BatchAugment

    real_call, calls = BatchAugment.__call__, {"train": 0}

    def crashing(self, x, train):
        if train:
            calls["train"] += 1
            if calls["train"] == 4 + 2:  # 4 updates per epoch: the 2nd batch of epoch 2
                raise RuntimeError("simulated crash")
        return real_call(self, x, train)

    monkeypatch.setattr(BatchAugment, "__call__", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, tmp_path / "crashed")
    monkeypatch.setattr(BatchAugment, "__call__", real_call)
    assert sorted(list_checkpoints(tmp_path / "crashed")) == [1]

    # ... a plain re-run refuses to overwrite it, --resume continues it
    with pytest.raises(MMCLError, match="--resume"):
        train_run(config, tmp_path / "crashed")
    train_run(config, tmp_path / "crashed", resume=True)

    a = weights(tmp_path / "straight" / "checkpoints" / "epoch_3" / "model.safetensors")
    b = weights(tmp_path / "crashed" / "checkpoints" / "epoch_3" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    opt_a = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_3" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(tmp_path / "crashed" / "checkpoints" / "epoch_3" / "optimizer.bin", weights_only=True)
    for k, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][k]["momentum_buffer"])
    assert load_scores(tmp_path / "straight" / "scores.npz").scores.tolist() == \
        load_scores(tmp_path / "crashed" / "scores.npz").scores.tolist()
    lines = [json.loads(x) for x in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]  # no duplicated epoch 2


# -- multi-process: DDP on CPU, lr scaling, gradient accumulation --------------------------------


def _launch(args: list[str], cwd: Path) -> str:
    """Run ``accelerate launch ARGS`` on the CPU; returns its stdout."""
    env = {**os.environ, **CPU_ONLY_ENV, "PYTHONUNBUFFERED": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run([str(accelerate), "launch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_two_processes_equal_one_process_with_gradient_accumulation(toy, tmp_path):
    """2 processes × batch 4 == 1 process × batch 4 × 2 accumulation steps: same global batch,
    same lr, same samples per update, so the same weights (BatchNorm sees 4 samples in both)."""
    config = write_config(tmp_path / "c.yaml", toy, data={"rotate": 0.0}, optim={"lr": 0.05, "reference_batch": 4})
    # real DDP: two gloo processes on CPU, started as `accelerate launch -m mmcl` from elsewhere
    ddp_out = _launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                       "--dynamo_backend", "no", "--main_process_port", "29533", "-m", "mmcl", "train",
                       "--config", str(config), "--output-dir", str(tmp_path / "ddp")],
                      cwd=tmp_path)
    # one process accumulating 2 micro-batches, started as `accelerate launch mmcl` from the repo root
    accum_out = _launch(["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                         "--dynamo_backend", "no", "mmcl", "train", "--config", str(config),
                         "--output-dir", str(tmp_path / "accum"), "--set", "train.grad_accum=2"],
                        cwd=REPO)

    # BatchNorm sees 4 samples per process: the 2-process run says so (once, from the main process)
    assert ddp_out.count("normalises BatchNorm over its own 4 samples") == 1
    assert "normalises BatchNorm" not in accum_out
    ddp, acc = json.loads((tmp_path / "ddp" / "run.json").read_text()), json.loads((tmp_path / "accum" / "run.json").read_text())
    assert ddp["sessions"][0]["num_processes"] == 2 and acc["sessions"][0]["num_processes"] == 1
    assert ddp["sessions"][0]["global_batch"] == acc["sessions"][0]["global_batch"] == 8
    assert ddp["sessions"][0]["lr"] == pytest.approx(0.05 * 8 / 4)  # scaled from the reference batch
    assert (tmp_path / "ddp" / "checkpoints" / "epoch_2" / "random_states_1.pkl").is_file()  # rank 1 ran

    # evaluation counted each of the 11 test samples exactly once (not 12 with the padding)
    scores = load_scores(tmp_path / "ddp" / "scores.npz")
    assert sorted(scores.names.tolist()) == [f"s{i:03d}" for i in range(16, 27)]
    epochs = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_samples"] for r in epochs if r["kind"] == "epoch"] == [11, 11]
    # both processes scored their shard with rank 0's BatchNorm statistics, those of the exported
    # model: `mmcl test` on it gives the same scores for every sample
    again = evaluate_weights(tmp_path / "ddp" / "model.safetensors", toy, "xsub", tmp_path / "again.npz", device="cpu")
    assert again.metrics.num_samples == 11
    retested = load_scores(tmp_path / "again.npz")
    order = {n: i for i, n in enumerate(scores.names)}
    np.testing.assert_allclose(retested.scores, scores.scores[[order[n] for n in retested.names]], rtol=1e-4, atol=1e-5)

    a = weights(tmp_path / "ddp" / "checkpoints" / "epoch_2" / "model.safetensors")
    b = weights(tmp_path / "accum" / "checkpoints" / "epoch_2" / "model.safetensors")
    start = weights(tmp_path / "ddp" / "checkpoints" / "epoch_1" / "model.safetensors")
    params = [k for k in a if "running_" not in k and "num_batches" not in k]
    for key in params:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert sum(not torch.equal(a[k], start[k]) for k in params) > len(params) // 2  # training moved them
    steps = [json.loads(x) for x in (tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in steps if r["kind"] == "step"]) == 4  # 2 updates per epoch, not 4


def test_two_synced_processes_normalise_like_one_process_with_the_whole_batch(toy, tmp_path):
    """train.sync_batchnorm: after one update of 2 processes × batch 4, every BatchNorm's running
    statistics are those of 1 process × batch 8 (per-process BatchNorm misses them by ~30 %).
    (The math, gradients included, is checked exactly in float64 by tests/test_sync_batchnorm.py;
    in float32 the toy clips' near-constant joints make the weights too ill-conditioned to compare.)"""
    config = write_config(tmp_path / "c.yaml", toy, data={"rotate": 0.0}, optim={"lr": 0.05, "reference_batch": 4},
                          schedule={"epochs": 1, "warmup_epochs": 1, "lr_steps": [1]},
                          train={"max_steps_per_epoch": 1})
    ddp_out = _launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                       "--dynamo_backend", "no", "--main_process_port", "29534", "-m", "mmcl", "train",
                       "--config", str(config), "--output-dir", str(tmp_path / "ddp"),
                       "--set", "train.sync_batchnorm=true"], cwd=tmp_path)
    assert "normalises BatchNorm" not in ddp_out
    train_run(config, tmp_path / "one", "train.batch_size=8")
    a = weights(tmp_path / "ddp" / "checkpoints" / "epoch_1" / "model.safetensors")
    b = weights(tmp_path / "one" / "checkpoints" / "epoch_1" / "model.safetensors")
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 36  # data_bn and the backbone's 35 BatchNorms
    for key in stats:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_lr_scaling_and_ctrgcn_schedule():
    cfg = load_config(REPO / "configs" / "ntu60" / "xsub" / "joint.yaml",
                      ["train.batch_size=16", "train.grad_accum=2"])
    assert build.global_batch(cfg, 2) == 64 and build.scaled_lr(cfg, 2) == pytest.approx(0.1)
    assert build.scaled_lr(cfg, 1) == pytest.approx(0.05)
    f = build.lr_factor(cfg)
    assert [f(e) for e in (0, 1, 4)] == pytest.approx([0.2, 0.4, 1.0])  # warm-up over 5 epochs
    assert [f(e) for e in (5, 34, 35, 54, 55, 64)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cpu_precision_note_warns_about_slow_bf16_and_points_to_fast_bf16():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    slow = build.cpu_precision_note(cpu, "bf16", bf16_native=False)
    assert slow is not None and slow.startswith("warning") and "no native bf16" in slow
    fast = build.cpu_precision_note(cpu, "no", bf16_native=True)
    assert fast is not None and "train.mixed_precision=bf16" in fast
    assert build.cpu_precision_note(cpu, "no", bf16_native=False) is None
    assert build.cpu_precision_note(cpu, "bf16", bf16_native=True) is None
    assert build.cpu_precision_note(gpu, "bf16", bf16_native=False) is None  # GPUs: no CPU advice


def test_batchnorm_note_only_for_small_per_process_batches():
    cfg = load_config(REPO / "configs" / "synthetic" / "xsub" / "joint.yaml", ["train.batch_size=4"])
    note = build.batchnorm_note(cfg, 2)
    assert note is not None and "2 processes" in note and "own 4 samples" in note and "train.batch_size" in note
    assert build.batchnorm_note(cfg, 1) is None  # one process: BatchNorm sees the whole batch
    big = load_config(REPO / "configs" / "synthetic" / "xsub" / "joint.yaml", ["train.batch_size=8"])
    assert build.batchnorm_note(big, 4) is None
    synced = load_config(REPO / "configs" / "synthetic" / "xsub" / "joint.yaml", ["train.batch_size=4",
                                                                                  "train.sync_batchnorm=true"])
    assert build.batchnorm_note(synced, 2) is None  # statistics over the global batch


# -- bad input ----------------------------------------------------------------------------------


def test_missing_dataset_and_split_are_clear_errors(toy, tmp_path):
    config = write_config(tmp_path / "c.yaml", toy)
    result = run_cli("train", "--config", str(config), "--set", f"data.path={tmp_path / 'nowhere'}",
                     "--output-dir", str(tmp_path / "r1"))
    assert result.exit_code == 1 and "nowhere is not a prepared dataset" in result.output
    result = run_cli("train", "--config", str(config), "--set", "data.benchmark=xview",
                     "--output-dir", str(tmp_path / "r2"))
    assert result.exit_code == 1 and "no benchmark 'xview'" in result.output and "xsub" in result.output


def test_features_not_covering_training_samples_are_named(toy, features, tmp_path):
    config = write_config(tmp_path / "c.yaml", toy, model={"fam": True},
                          features={"rgb": str(features["partial"])})
    result = run_cli("train", "--config", str(config), "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert "no features for 2 of 16 training samples" in result.output
    for name in features["missing"]:
        assert name in result.output


def test_mismatched_checkpoint_is_refused(mmcl_run, tmp_path):
    other = make_dataset(tmp_path / "other", classes=CLASSES + ("jump",), n_train=10, n_test=5)
    result = run_cli("test", "--weights", str(mmcl_run / "model.safetensors"), "--data", str(other),
                     "--benchmark", "xsub")
    assert result.exit_code == 1 and "num_class: 4 there, 5 here" in result.output
    # resuming a run on a dataset with another class count
    result = run_cli("train", "--resume", "--output-dir", str(mmcl_run), "--set", f"data.path={other}",
                     "--set", "schedule.epochs=3")
    assert result.exit_code == 1 and "does not match" in result.output and "num_class" in result.output


def test_nan_loss_stops_with_an_error_and_keeps_the_last_checkpoint(toy, tmp_path):
    config = write_config(tmp_path / "c.yaml", toy, schedule={"epochs": 3, "warmup_epochs": 0, "lr_steps": [1],
                                                                  "lr_decay": float("nan")})
    result = run_cli("train", "--config", str(config), "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert "became nan at epoch 2" in result.output and "epoch_1" in result.output
    assert sorted(list_checkpoints(tmp_path / "r")) == [1]
    state = json.loads((tmp_path / "r" / "checkpoints" / "epoch_1" / "trainer_state.json").read_text())
    assert state["epoch"] == 1
    ok = weights(tmp_path / "r" / "checkpoints" / "epoch_1" / "model.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in ok.values())
