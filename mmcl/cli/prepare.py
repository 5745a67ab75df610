"""``mmcl prepare``: raw recordings -> a prepared dataset (logic in :mod:`mmcl.data.prepare`)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import click

from mmcl.errors import MMCLError

DATASETS = ("ntu60", "ntu120", "ucla", "utd-mhad", "synthetic")

HELP = """Build a prepared dataset from raw recordings.

\b
DATASET is one of ntu60, ntu120, ucla, utd-mhad, synthetic. The output folder
holds memory-mapped skeleton arrays (valid frames only), the sample index,
the benchmark splits in CTR-GCN's order, and rejected.csv listing every
sample that was excluded and why. It is written to a temporary folder and
moved into place at the end, so an interrupted run leaves nothing behind.

\b
NTU RGB+D follows CTR-GCN's preprocessing exactly (denoising, two actor
slots, zero-row removal, centring on actor 1's spine-mid), so results are
comparable with published numbers. Samples on the official missing-skeleton
lists are skipped; malformed files are rejected with the line number.

\b
Examples:
  # the built-in synthetic set (no download needed)
  mmcl prepare synthetic --out data/synthetic --seed 0
\b
  # NTU RGB+D 60 / 120 from the raw .skeleton folder(s), 8 processes
  mmcl prepare ntu60 --raw nturgb+d_skeletons --out data/ntu60 --workers 8
  mmcl prepare ntu120 --raw raw/ntu120 --out data/ntu120
\b
  # convert CTR-GCN's NTU60_CS.npz (benchmark taken from the file name)
  mmcl prepare ntu60 --from-ctrgcn-npz NTU60_CS.npz --names names.txt --out data/ntu60-cs
\b
  # NW-UCLA (CTR-GCN's all_sqe/ JSON) and UTD-MHAD (.mat files)
  mmcl prepare ucla --raw all_sqe --out data/ucla
  mmcl prepare utd-mhad --raw UTD-MHAD/Skeleton --out data/utd-mhad
\b
  # also cut RGB actor strips for co-learning from the NTU colour videos
  mmcl prepare ntu60 --raw skeletons --videos nturgb+d_rgb --out data/ntu60

\b
Two CTR-GCN quirks are kept by default (the published results have them):
--fix-slot2-span and --fix-empty-frame-origin fix them (see mmcl.data.ntu).
"""


@click.command("prepare", help=HELP)
@click.argument("dataset", type=click.Choice(DATASETS))
@click.option("--raw", type=click.Path(path_type=Path), help="Folder of raw recordings.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to write.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Parallel processes (default: all CPU cores).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--from-ctrgcn-npz", "npz", type=click.Path(path_type=Path),
              help="Import a CTR-GCN NTU60_CS.npz-style file instead of raw files (ntu60/ntu120).")
@click.option("--names", type=click.Path(path_type=Path),
              help="With --from-ctrgcn-npz: sample names, one per line (x_train rows, then x_test rows).")
@click.option("--benchmark", help="With --from-ctrgcn-npz: the file's benchmark when its name does not say.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic set.")
@click.option("--fix-slot2-span", is_flag=True,
              help="NTU: give actor slot 2 a real span (CTR-GCN starts it at frame 0 and drops bodies).")
@click.option("--fix-empty-frame-origin", is_flag=True,
              help="NTU: keep all-zero frames of one-body samples at 0 (CTR-GCN makes them -origin).")
@click.option("--videos", type=click.Path(path_type=Path), help="RGB strips from <name>_rgb.avi videos here.")
@click.option("--frames", type=click.Path(path_type=Path), help="RGB strips from per-frame image folders here.")
@click.option("--strip-frames", "strip_frames", type=click.IntRange(min=1), default=5, show_default=True,
              help="Frames per RGB strip.")
def prepare(
    dataset: str,
    raw: Path | None,
    out: Path,
    workers: int | None,
    overwrite: bool,
    npz: Path | None,
    names: Path | None,
    benchmark: str | None,
    seed: int,
    fix_slot2_span: bool,
    fix_empty_frame_origin: bool,
    videos: Path | None,
    frames: Path | None,
    strip_frames: int,
) -> None:
    workers = workers or os.cpu_count() or 1
    ntu = dataset in ("ntu60", "ntu120")
    if (fix_slot2_span or fix_empty_frame_origin) and not ntu:
        raise click.UsageError("--fix-slot2-span and --fix-empty-frame-origin apply to ntu60/ntu120 only")
    if (names or benchmark) and not npz:
        raise click.UsageError("--names and --benchmark go with --from-ctrgcn-npz")
    if videos and frames:
        raise click.UsageError("give either --videos or --frames, not both")
    extras = _rgb_extras(videos, frames, strip_frames, workers) if (videos or frames) else None
    try:
        if npz is not None:
            if not ntu:
                raise click.UsageError("--from-ctrgcn-npz imports ntu60 or ntu120 files")
            if raw is not None or extras is not None:
                raise click.UsageError("--from-ctrgcn-npz takes no --raw, --videos or --frames")
            from mmcl.data.prepare import import_ctrgcn_npz

            summary = import_ctrgcn_npz(npz, out, dataset, names, benchmark=benchmark, overwrite=overwrite)
        elif dataset == "synthetic":
            if raw is not None:
                raise click.UsageError("the synthetic set is generated; it takes no --raw")
            if extras is not None:
                raise click.UsageError("the synthetic set has no videos for RGB strips")
            prepare_synthetic = _lookup("mmcl.data.synthetic", "prepare_synthetic", dataset)
            summary = prepare_synthetic(out, seed=seed, overwrite=overwrite, workers=workers)
        else:
            if raw is None:
                raise click.UsageError(f"mmcl prepare {dataset} needs --raw DIR, the folder of raw recordings")
            from mmcl.data.prepare import prepare_dataset

            source = _source(dataset, fix_slot2_span, fix_empty_frame_origin)
            summary = prepare_dataset(source, raw, out, workers=workers, overwrite=overwrite, extras=extras)
    except MMCLError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(summary)


def _source(dataset: str, fix_slot2_span: bool, fix_empty_frame_origin: bool) -> Any:
    if dataset in ("ntu60", "ntu120"):
        from mmcl.data.ntu import Ntu60Source, Ntu120Source

        cls = Ntu60Source if dataset == "ntu60" else Ntu120Source
        return cls(fix_slot2_span=fix_slot2_span, fix_empty_frame_origin=fix_empty_frame_origin)
    module, attr = {"ucla": ("mmcl.data.ucla", "UclaSource"), "utd-mhad": ("mmcl.data.utd_mhad", "UtdMhadSource")}[dataset]
    return _lookup(module, attr, dataset)()


def _lookup(module: str, attr: str, dataset: str) -> Any:
    """A dataset module's entry point, imported only when that dataset is prepared."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
    except AttributeError:
        pass
    raise click.ClickException(f"`mmcl prepare {dataset}` is not available in this build of mmcl ({module}.{attr} is missing)")


def _rgb_extras(videos: Path | None, frames: Path | None, k: int, workers: int) -> Callable[[Path], list[tuple[str, str]]]:
    """The extras hook that cuts RGB strips into the finished dataset before it is committed."""
    build_strips = _lookup("mmcl.data.rgb", "build_strips", "--videos/--frames")

    def extras(dataset_dir: Path) -> list[tuple[str, str]]:
        rejected = build_strips(dataset_dir, videos=videos, frames=frames, k=k, workers=workers)
        return [(name, f"rgb: {reason}") for name, reason in rejected]

    return extras


def _report(summary: Any) -> None:
    from tabulate import tabulate

    click.echo(tabulate(summary.rows(), tablefmt="simple", disable_numparse=True))
    if summary.rejected or summary.extra_rejected:
        click.echo(f"Rejected samples and reasons: {Path(summary.out) / 'rejected.csv'}")
    if summary.unexpected:
        click.secho(
            f"warning: {summary.unexpected} samples hit an unexpected error (see rejected.csv); "
            "please report it",
            fg="yellow",
            err=True,
        )
