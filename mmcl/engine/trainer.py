"""The training loop on Hugging Face Accelerate.

One code path for a laptop CPU, one GPU, and many GPUs on many machines::

    accelerator.prepare(model, optimizer, loaders, scheduler)      # DDP, devices, precision
    for epoch:                                                     # resumable at each boundary
        for batch:                                                 # this process's shard
            with accelerator.accumulate(model):                    # grad accumulation
                loss = model.losses(model(augment(x), rgb, text))  # autocast per Accelerate config
                accelerator.backward(loss); optimizer.step()
        scheduler.step()                                           # per epoch, as CTR-GCN
        predict(..., gather_for_metrics)                           # each test sample once
        save_checkpoint(...)                                       # full Accelerate state

The learning rate is stated for ``optim.reference_batch`` and scaled linearly with the real
global batch (per-process batch × processes × accumulation), so the number of GPUs does not
change the result. Every source of randomness is a function of (seed, epoch, process), so a
run resumed from a checkpoint ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcl import __version__
from mmcl.config import Config, diff_configs, from_dict
from mmcl.engine import build
from mmcl.engine.checkpoint import (
    export_model,
    latest_checkpoint,
    prune_checkpoints,
    read_state,
    save_checkpoint,
)
from mmcl.engine.evaluate import Predictions, predict, score_meta, write_results
from mmcl.engine.metrics import Metrics, classification_metrics
from mmcl.engine.report import plot_training_curve, read_metrics, write_json, write_text
from mmcl.errors import MMCLError
from mmcl.heap import keep_freed_memory
from mmcl.models import bf16_is_fast, optimize_for_inference
from mmcl.scores import load_scores, save_scores

# Config keys that may change when resuming: they do not change the trained weights (beyond float
# rounding, as the thread count does).
RESUME_SAFE = frozenset({
    "data.path", "data.num_workers", "train.output_dir", "train.eval_batch_size", "train.log_every",
    "train.keep_checkpoints", "train.eval_every", "train.keep_freed_memory",
    "train.skip_empty_persons", "schedule.epochs",
})


class NonFiniteLoss(MMCLError):
    """The loss became NaN or infinite; earlier checkpoints are kept."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    epochs: int
    best_epoch: int
    best_top1: float
    last_top1: float | None  # test top-1 after the final epoch (not selected on the test set)
    metrics: Metrics | None
    report: str


def train(cfg: Config, run_dir: Path | str, *, resume: bool = False) -> RunResult:
    """Train per ``cfg`` into ``run_dir``; with ``resume``, continue from its latest checkpoint."""
    run_dir = Path(run_dir)
    _check_run_dir(cfg, run_dir, resume)
    # Before the data and model are built, so their blocks too come from the kept heap.
    heap_kept = cfg.train.keep_freed_memory and keep_freed_memory()
    kwargs: dict[str, Any] = dict(gradient_accumulation_steps=cfg.train.grad_accum,
                                  step_scheduler_with_optimizer=False)
    if cfg.train.mixed_precision is not None:
        kwargs["mixed_precision"] = cfg.train.mixed_precision
    if is_tensorboard_available():
        kwargs.update(log_with="tensorboard", project_dir=str(run_dir))
    accelerator = Accelerator(**kwargs)
    try:
        return Trainer(cfg, run_dir, accelerator, resume=resume, heap_kept=heap_kept).fit()
    finally:
        accelerator.end_training()


def _check_run_dir(cfg: Config, run_dir: Path, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    if not resume:
        raise MMCLError(
            f"{run_dir} already holds a run; pass --resume to continue it, "
            "or --output-dir DIR to start a new one"
        )
    old = from_dict(yaml.safe_load(saved.read_text()) or {}, source=str(saved))
    changed = {k: v for k, v in diff_configs(old, cfg).items() if k not in RESUME_SAFE}
    if changed:
        shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items())
        raise MMCLError(
            f"cannot resume {run_dir}: the config differs from the run's config.yaml in {shown}. "
            "Resume with the same config (only " + ", ".join(sorted(RESUME_SAFE)) + " may change), "
            "or start a new run with --output-dir"
        )


class Trainer:
    """Holds one run's prepared objects; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: Config, run_dir: Path, accelerator: Accelerator, *, resume: bool,
                 heap_kept: bool = False) -> None:
        self.cfg, self.run_dir, self.acc, self.heap_kept = cfg, run_dir, accelerator, heap_kept
        self.main = accelerator.is_main_process
        set_seed(cfg.seed)  # the same initial weights on every process
        self.data = build.build_data(cfg)
        self.spec = build.model_spec(cfg, self.data.ds)
        model = build.build_model(cfg, self.spec, self.data.feature_dims)
        model = build.sync_batchnorm(cfg, model, accelerator.device, accelerator.num_processes)
        self.weights = build.loss_weights(cfg)
        n = accelerator.num_processes
        self.global_batch = build.global_batch(cfg, n)
        self.lr = build.scaled_lr(cfg, n)
        optimizer = build.make_optimizer(cfg, model, self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build.lr_factor(cfg))

        cap = None
        if cfg.train.max_steps_per_epoch is not None:
            cap = cfg.train.max_steps_per_epoch * self.global_batch
        self.sampler = build.EpochSampler(len(self.data.train), cfg.seed, cap)
        pin = accelerator.device.type == "cuda"
        train_loader = DataLoader(self.data.train, batch_size=cfg.train.batch_size, sampler=self.sampler,
                                  drop_last=True, num_workers=cfg.data.num_workers, pin_memory=pin)
        test_loader = DataLoader(self.data.test, batch_size=cfg.train.eval_batch_size, shuffle=False,
                                 num_workers=cfg.data.num_workers, pin_memory=pin)
        (self.model, self.optimizer, self.train_loader, self.test_loader, self.scheduler) = accelerator.prepare(
            model, optimizer, train_loader, test_loader, scheduler)
        if len(self.train_loader) == 0:
            raise MMCLError(
                f"the training split has {len(self.data.train)} clips, fewer than one batch of "
                f"{cfg.train.batch_size} per process × {n} processes; lower train.batch_size"
            )
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best_epoch, self.best_top1 = 0, -1.0
        if resume:
            self._resume()
        self._start_session(resume)

    # -- setup ---------------------------------------------------------------------------
    @property
    def raw_model(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)

    def _test_model(self) -> Callable[[torch.Tensor], Any]:
        """What the test after an epoch runs. On CPU: the skeleton model through
        ``optimize_for_inference``, as ``mmcl test`` runs it (BatchNorm folded, cache-sized chunks;
        several times faster than the training model at batch 64). Elsewhere: the prepared model,
        under the run's mixed precision."""
        if self.acc.device.type != "cpu":
            return self.model
        if self.acc.num_processes > 1:
            # Rank 0's BatchNorm statistics everywhere, as DDP's first eval forward would sync them.
            for buffer in self.raw_model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        return optimize_for_inference(self.raw_model.skeleton_model())

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            self.acc.print(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}, starting from epoch 1")
            return
        state = read_state(ckpt)
        build.check_spec(state["spec"], self.spec, where=f"checkpoint {ckpt}")
        if state["global_batch"] != self.global_batch:
            raise MMCLError(
                f"checkpoint {ckpt} was trained with a global batch of {state['global_batch']} "
                f"(batch_size × processes × grad_accum); this launch gives {self.global_batch}. "
                "Resume with the same global batch, e.g. adjust train.grad_accum"
            )
        self.acc.load_state(str(ckpt))
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.best_epoch, self.best_top1 = state["best_epoch"], state["best_top1"]
        self.acc.print(f"resumed from {ckpt} (epoch {self.epoch} done, best {100 * self.best_top1:.2f}% "
                       f"at epoch {self.best_epoch})")

    def _start_session(self, resume: bool) -> None:
        """Write config.yaml and run.json; trim metrics.jsonl to the resumed epoch."""
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml",
                       f"# resolved config, mmcl {__version__}\n" + self.cfg.to_yaml())
            kept = [r for r in read_metrics(self.metrics_path) if r.get("epoch", 0) <= self.epoch] if resume else []
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            info_path = self.run_dir / "run.json"
            info = json.loads(info_path.read_text()) if resume and info_path.is_file() else {"sessions": []}
            info["sessions"].append({
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "from_epoch": self.epoch,
                "command": sys.argv,
                "num_processes": self.acc.num_processes,
                "device": str(self.acc.device),
                "mixed_precision": self.acc.mixed_precision,
                "grad_accum": self.cfg.train.grad_accum,
                "global_batch": self.global_batch,
                "lr": self.lr,
                "freed_memory_kept": self.heap_kept,
                "versions": _versions(),
            })
            info["spec"] = self.spec
            info["train_samples"], info["test_samples"] = len(self.data.train.names), len(self.data.test.names)
            write_json(info_path, info)
        if self.acc.log_with:  # TensorBoard, when it is installed
            self.acc.init_trackers("tensorboard", config=_flat_hparams(self.cfg.to_dict()))
        self.acc.wait_for_everyone()

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> RunResult:
        cfg, acc = self.cfg, self.acc
        epochs = cfg.schedule.epochs
        acc.print(
            f"training {self.spec['dataset']} {cfg.data.benchmark} {cfg.data.stream}: "
            f"{len(self.data.train.names)} train / {len(self.data.test.names)} test samples, "
            f"{acc.num_processes} process(es) on {acc.device}, global batch {self.global_batch}, "
            f"lr {self.lr:g}, precision {acc.mixed_precision}, run dir {self.run_dir}"
        )
        if note := build.batchnorm_note(cfg, acc.num_processes):
            acc.print(note)
        if note := build.cpu_precision_note(acc.device, acc.mixed_precision, bf16_is_fast()):
            acc.print(note)
        for epoch in range(self.epoch, epochs):
            start = time.time()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_top1 = self.train_epoch(epoch)
            self.scheduler.step()
            record: dict[str, Any] = {
                "kind": "epoch", "epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                "train_top1": train_top1, "step": self.global_step,
                "num_processes": acc.num_processes, "global_batch": self.global_batch,
            }
            last = epoch + 1 == epochs
            if last or (epoch + 1) % cfg.train.eval_every == 0:
                preds = predict(self._test_model(), self.test_loader, self.data.augment, self.data.test.names,
                                accelerator=acc, progress=self.main, desc="test")
                metrics = classification_metrics(preds.scores, preds.labels, self.spec["num_class"])
                record.update(test_top1=metrics.top1, test_top5=metrics.top5, test_samples=metrics.num_samples)
                self._maybe_export(epoch + 1, metrics, preds, last)
            record["seconds"] = round(time.time() - start, 3)
            self.epoch = epoch + 1
            save_checkpoint(acc, self.run_dir, self.epoch, self._state())
            if self.main:
                prune_checkpoints(self.run_dir, cfg.train.keep_checkpoints, self.best_epoch)
            self._log(record)
            acc.print(_epoch_line(record, epochs, self.best_top1, self.best_epoch))
        return self.finish()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this process's shard; returns (mean loss, train top-1) over all processes."""
        acc, cfg = self.acc, self.cfg
        self.model.train()
        _seed_epoch(cfg.seed, epoch, acc.process_index)
        self.train_loader.set_epoch(epoch)  # Accelerate's loader passes it on to our sampler
        self.data.train.set_epoch(epoch)  # random crops are drawn from (seed, epoch, index)
        total = len(self.train_loader)
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        correct = torch.zeros((), dtype=torch.int64, device=acc.device)
        seen = torch.zeros((), dtype=torch.int64, device=acc.device)
        tic, since = time.time(), 0
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", leave=False,
                   disable=not self.main, dynamic_ncols=True)
        for i, batch in enumerate(self.train_loader):
            with acc.accumulate(self.model):
                x = self.data.augment(batch["x"], True)
                with acc.autocast():
                    out = self.model(x, rgb=batch.get("rgb"), text=batch.get("text"))
                    losses = self.raw_model.losses(out, batch["label"], self.weights)
                loss = losses["total"]
                mean_loss = acc.reduce(loss.detach().float(), "mean").item()  # the same on every process
                if not math.isfinite(mean_loss):
                    self._nan(epoch, mean_loss)
                acc.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            logits = out["logits"].detach()
            loss_sum += mean_loss
            correct += (logits.argmax(1) == batch["label"]).sum()
            seen += batch["label"].numel()
            since += batch["label"].numel()
            bar.update(1)
            if acc.sync_gradients:
                self.global_step += 1
                if self.global_step % cfg.train.log_every == 0:
                    rate = since * acc.num_processes / max(time.time() - tic, 1e-9)
                    lr = self.optimizer.param_groups[0]["lr"]
                    parts = {k: acc.reduce(v.detach().float(), "mean").item() for k, v in losses.items() if k != "total"}
                    self._log({"kind": "step", "epoch": epoch + 1, "epoch_float": epoch + (i + 1) / total,
                               "step": self.global_step, "loss": mean_loss, **parts, "lr": lr,
                               "samples_per_s": round(rate, 2)})
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}", sps=f"{rate:.0f}")
                    tic, since = time.time(), 0
        bar.close()
        correct, seen = acc.reduce(correct, "sum"), acc.reduce(seen, "sum")
        return float(loss_sum.item() / total), float(correct.item() / max(seen.item(), 1))

    # -- outputs -------------------------------------------------------------------------
    def _maybe_export(self, epoch: int, metrics: Metrics, preds: Predictions, last: bool) -> None:
        """Keep the best epoch (or the last one): its skeleton model and its test scores."""
        better = metrics.top1 > self.best_top1
        if better:
            self.best_epoch, self.best_top1 = epoch, metrics.top1
        if not (better if self.cfg.train.model_from == "best" else last):
            return
        if self.main:
            skeleton = self.raw_model.skeleton_model()
            export_model(skeleton, self.run_dir / "model.safetensors", self.spec,
                         extra={"epoch": epoch, "test_top1": metrics.top1, "benchmark": self.cfg.data.benchmark})
            meta = score_meta(self.spec, benchmark=self.cfg.data.benchmark,
                              checkpoint=f"{self.run_dir / 'model.safetensors'} (epoch {epoch})",
                              extra={"epoch": epoch, "run": str(self.run_dir)})
            save_scores(self.run_dir / "scores.npz", preds.names, preds.scores, preds.labels, meta)
        self.acc.wait_for_everyone()

    def finish(self) -> RunResult:
        """Report, confusion matrix and training curve from the exported scores."""
        metrics, report = None, ""
        if self.main and (self.run_dir / "scores.npz").is_file():
            sf = load_scores(self.run_dir / "scores.npz")
            preds = Predictions(list(sf.names), sf.scores, sf.labels)
            title = (f"{self.spec['dataset']} {self.cfg.data.benchmark} {self.cfg.data.stream}, "
                     f"epoch {sf.meta.get('epoch')} ({self.cfg.train.model_from})")
            metrics, report = write_results(preds, self.run_dir / "scores.npz", self.spec["class_names"],
                                            sf.meta, title=title)
            plot_training_curve(read_metrics(self.metrics_path), self.run_dir / "training_curve.png",
                                title=f"{self.spec['dataset']} {self.cfg.data.benchmark} {self.cfg.data.stream}")
        self.acc.wait_for_everyone()
        tested = [r for r in read_metrics(self.metrics_path) if r.get("kind") == "epoch" and "test_top1" in r]
        last = tested[-1]["test_top1"] if tested and tested[-1]["epoch"] == self.epoch else None
        return RunResult(self.run_dir, self.epoch, self.best_epoch, self.best_top1, last, metrics, report)

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "global_step": self.global_step, "best_epoch": self.best_epoch,
            "best_top1": self.best_top1, "global_batch": self.global_batch,
            "num_processes": self.acc.num_processes, "spec": self.spec, "mmcl_version": __version__,
        }

    def _log(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        if self.acc.trackers:
            self.acc.log({f"{record['kind']}/{k}": v for k, v in scalars.items()}, step=self.global_step)

    def _nan(self, epoch: int, value: float) -> None:
        self._log({"kind": "error", "epoch": epoch + 1, "step": self.global_step + 1, "loss": str(value)})
        ckpt = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint, {ckpt}, is kept" if ckpt else "no epoch had finished, so no checkpoint exists"
        raise NonFiniteLoss(
            f"the training loss became {value} at epoch {epoch + 1}, update {self.global_step + 1}; "
            f"training stopped and {kept}. Lower optim.lr or check the inputs for NaN/inf and train again "
            "(`--resume` continues from that checkpoint with an unchanged config)"
        )


def _seed_epoch(seed: int, epoch: int, process: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, process): a resumed epoch draws the same numbers."""
    set_seed(int(np.random.SeedSequence([seed, epoch, process]).generate_state(1)[0]))


def _epoch_line(r: dict[str, Any], epochs: int, best: float, best_epoch: int) -> str:
    test = f"  test {100 * r['test_top1']:.2f}% (top-5 {100 * r['test_top5']:.2f}%)" if "test_top1" in r else ""
    best_s = f"  best {100 * best:.2f}% @ {best_epoch}" if best_epoch else ""
    return (f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.4f}  train {100 * r['train_top1']:.2f}%"
            f"{test}{best_s}  lr {r['lr']:.4g}  {r['seconds']:.1f}s")


def _versions() -> dict[str, str]:
    import accelerate

    return {"mmcl": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def _flat_hparams(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_hparams(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
