"""``mmcl test``: evaluate a trained model on skeletons alone (no RGB, text or LLM)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A training run directory (uses its model.safetensors and config).")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="An exported model.safetensors (needs --data and --benchmark).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset directory [default with --run: the run's data.path].")
@click.option("--benchmark", help="Split name, e.g. xsub [default with --run: the run's benchmark].")
@click.option("--split", default="test", show_default=True, help="Which part of the benchmark: test or train.")
@click.option("--stream", help="Only as a check: the stream is read from the weights.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Score file to write [default: <run>/test/scores.npz, or test/scores.npz beside --weights].")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cuda when available]")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Dtype the model runs in. bf16 is faster on GPUs and on CPUs with native bf16 "
                   "(AVX512-BF16 or AMX), logits within about 1 % of fp32's; on other CPUs it is far "
                   "slower; fp16 is for GPUs. fp32 runs the model as trained, to float rounding.")
@click.option("--compile", "compile_", is_flag=True,
              help="CPU only: run the model compiled by torch.compile (inductor; needs a C++ compiler and "
                   "Python's headers). Each new chunk shape compiles once (10-50 s), so it pays on large "
                   "test sets: the forward got 1.1-1.3x faster in bf16 on an AVX512-BF16 CPU, 1.04-1.18x "
                   "in fp32 on AVX2 (benchmarks/cpu_bf16.py, compiled_inference.py).")
def test(run_dir: Path | None, weights: Path | None, data: Path | None, benchmark: str | None, split: str,
         stream: str | None, out: Path | None, batch_size: int, device: str | None, workers: int,
         precision: str, compile_: bool) -> None:
    """Score a split with a trained skeleton model; print and save the report.

    \b
    Examples:
      mmcl test --run runs/synthetic-xsub-joint
      mmcl test --run runs/ntu60-xsub-joint --precision bf16 --compile   # a CPU with AVX512-BF16
      mmcl test --weights runs/ntu60-xsub-bone/model.safetensors --data data/ntu60 \\
                --benchmark xsub --out scores/ntu60-xsub-bone.npz
      mmcl ensemble scores/*.npz          # fuse the streams by sample name

    \b
    Writes the score file (names, raw logits, labels, meta; the input of `mmcl ensemble`),
    report.txt / report.json (top-1, top-5, per-class accuracy) and confusion_matrix.png
    beside it (<stem>_report.txt etc. when the file is not called scores.npz).
    """
    import yaml

    from mmcl.engine.evaluate import evaluate_weights

    if (run_dir is None) == (weights is None):
        raise click.UsageError("give exactly one of --run DIR or --weights model.safetensors")
    if run_dir is not None:
        weights = run_dir / "model.safetensors"
        cfg_file = run_dir / "config.yaml"
        saved = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
        data = data or Path((saved.get("data") or {}).get("path", ""))
        benchmark = benchmark or (saved.get("data") or {}).get("benchmark")
        out = out or run_dir / "test" / "scores.npz"
        if not weights.is_file():
            raise click.ClickException(f"{run_dir} has no model.safetensors yet (is training finished?)")
    if data is None or not str(data) or benchmark is None:
        raise click.UsageError("--weights needs --data DIR and --benchmark NAME")
    out = out or weights.parent / "test" / "scores.npz"
    result = evaluate_weights(weights, data, benchmark, out, stream=stream, split=split,
                              batch_size=batch_size, device=device, num_workers=workers, precision=precision,
                              compile=compile_)
    click.echo(result.report)
    click.echo("wrote " + ", ".join(str(p) for p in result.paths.values()))
