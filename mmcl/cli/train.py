"""``mmcl train``: train a skeleton GCN with MMCL co-learning on Hugging Face Accelerate."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML config, e.g. configs/ntu60/xsub/joint.yaml (bases are merged in).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value (YAML-parsed); repeatable.")
@click.option("--resume", is_flag=True,
              help="Continue the run in the output dir from its latest checkpoint, exactly.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory [default: train.output_dir, else runs/<config path, dashed>].")
def train(config_path: Path | None, overrides: tuple[str, ...], resume: bool, output_dir: Path | None) -> None:
    """Train one stream of one benchmark; test on skeletons alone.

    \b
    Examples:
      mmcl train --config configs/synthetic/xsub/joint.yaml
      mmcl train --config configs/ntu60/xsub/bone.yaml --set data.path=/data/ntu60
      mmcl train --config configs/utd-mhad/xsub/joint.yaml --set train.batch_size=32 --set schedule.epochs=5
      mmcl train --config configs/ntu60/xsub/joint.yaml --resume      # after a crash
      mmcl train --resume --output-dir runs/ntu60-xsub-joint           # same, config from the run
    \b
    Several GPUs / machines / mixed precision, through Accelerate (`accelerate config` once):
      accelerate launch -m mmcl train --config configs/ntu120/xsub/joint.yaml
      accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 -m mmcl train --config ...
    The learning rate in the config is for optim.reference_batch samples per update and is
    scaled linearly with the real global batch (train.batch_size × processes × train.grad_accum).

    \b
    The run directory gets: config.yaml (resolved), run.json (versions, processes, lr),
    metrics.jsonl, checkpoints/epoch_N/ (full Accelerate state; last K and the best kept),
    model.safetensors (skeleton model only, for `mmcl test`), scores.npz (the exported
    epoch's test scores), report.txt, training_curve.png and confusion_matrix.png.
    """
    from mmcl.config import default_output_dir, load_config
    from mmcl.errors import MMCLError

    if config_path is None:
        if not (resume and output_dir is not None):
            raise click.UsageError("--config is required (or --resume with --output-dir of an existing run)")
        config_path = output_dir / "config.yaml"
        if not config_path.is_file():
            raise MMCLError(f"{output_dir} has no config.yaml to resume from; pass --config")
    cfg = load_config(config_path, overrides)
    run_dir = output_dir or Path(cfg.train.output_dir or default_output_dir(config_path))

    from mmcl.engine.trainer import train as run_training

    result = run_training(cfg, run_dir, resume=resume)
    if result.report:
        click.echo(result.report)
        last = f"{100 * result.last_top1:.2f}%" if result.last_top1 is not None else "-"
        click.echo(f"test top-1: {last} after the last epoch ({result.epochs}), best {100 * result.best_top1:.2f}% "
                   f"at epoch {result.best_epoch} (selected on the test split, as CTR-GCN reports); "
                   f"outputs in {result.run_dir}")
