"""``mmcl ensemble``: fuse per-stream score files by sample name (logic in :mod:`mmcl.ensemble`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mmcl.errors import MMCLError

HELP = """Fuse per-stream score files by sample name, and search weights honestly.

\b
SCORES are mmcl score files (.npz, from `mmcl test`) or upstream pickles
({sample_name: scores}, as CTR-GCN and MMCL-Action write), one per stream.
Pickles are read with a restricted unpickler: anything but plain data is refused.
Rows are joined by sample name, never by row order.

\b
Labels come from the score files, or from --labels FILE (one NTU name per
line, label = A### - 1, e.g. upstream NTU120_XSub_Val.txt), or from a
prepared dataset (--data DIR --benchmark B). CTR-GCN names its test samples
test_<i> (row i of its test split); with --labels or --data they are read as
line i of that list, which must then be in CTR-GCN's order.

\b
Examples:
  # six MMCL-Action streams with its published NTU120 X-Sub weights
  mmcl ensemble J.pkl B.pkl JM.pkl BM.pkl HDJ.pkl HDB.pkl \\
      --names j,b,jm,bm,hdj,hdb --labels NTU120_XSub_Val.txt \\
      --weights 2.3617,4.3540,3.6038,1.0158,3.0575,5.0
\b
  # four CTR-GCN streams, its 0.6/0.6/0.4/0.4 weights, labels from a dataset
  mmcl ensemble j.pkl b.pkl jm.pkl bm.pkl --names j,b,jm,bm \\
      --weights j=0.6,b=0.6,jm=0.4,bm=0.4 --data data/ntu120 --benchmark xsub
\b
  # mmcl score files; search weights by 5-fold cross-fitting on the test set
  mmcl ensemble runs/ntu120-xsub-*/scores.npz --search --folds 5
\b
  # honest search on held-out training data, then apply to the test set
  mmcl ensemble test/j.npz test/b.npz --search-on val/j.npz val/b.npz
\b
  # write the fused scores and machine-readable results
  mmcl ensemble runs/*/scores.npz --out fused.npz --json > results.json

\b
Weight search: coordinate ascent with an exact line search over weights in
[0, 1] (see mmcl.ensemble). With --search-on, weights never see the test
labels. With --search alone, the reported figure is out-of-fold (k-fold
cross-fitting); the figure searched on all test samples is shown beside it,
labelled OPTIMISTIC.
"""


class _GreedyOption(click.Option):
    """A ``multiple`` option that also takes the values after it: ``--search-on a.npz b.npz``.

    It stops at the next option. Where click's parser internals differ, it falls back to a
    plain repeatable option (``--search-on a.npz --search-on b.npz``), which always works.
    """

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        table = getattr(parser, "_long_opt", {})
        for opt in self.opts:
            target = table.get(opt)
            if target is None or not hasattr(target, "process"):
                continue
            original = target.process

            def process(value: Any, state: Any, _original: Any = original) -> None:
                _original(value, state)
                rargs = getattr(state, "rargs", None)
                while rargs and not str(rargs[0]).startswith("-"):
                    _original(rargs.pop(0), state)

            target.process = process


@click.command("ensemble", help=HELP, short_help="Fuse per-stream score files by sample name.")
@click.argument("scores", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--names", "stream_names", metavar="J,B,...",
              help="Stream names, comma-separated, one per file (default: each file's meta, else its file name).")
@click.option("--weights", metavar="LIST",
              help="Fixed weights: 0.6,0.6,0.4,0.4 (file order) or j=2,b=2,jm=1,bm=1 (by name). Default: equal.")
@click.option("--normalize", type=click.Choice(["none", "softmax", "zscore"]), default="none", show_default=True,
              help="Per-stream normalisation before fusing: raw logits (as upstream), softmax, "
                   "or z-score per sample over the classes.")
@click.option("--intersect", is_flag=True,
              help="Keep only the samples every file (and the label list) has, instead of failing on differing name sets.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="NTU name list (one name per line); labels from the naming rule A### - 1. "
                   "The score files must cover exactly these names.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Prepared dataset (from `mmcl prepare`) to take labels and the test split from; needs --benchmark.")
@click.option("--benchmark", metavar="B", help="Benchmark of --data whose test split is scored (e.g. xsub).")
@click.option("--search", is_flag=True,
              help="Search weights maximising top-1; alone, by k-fold cross-fitting on the test scores.")
@click.option("--search-on", "search_on", cls=_GreedyOption, multiple=True, metavar="VAL...",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Validation score files, one per stream in the same order (held-out training data): "
                   "search weights there, report the test accuracy with them. Implies --search.")
@click.option("--folds", type=int, default=None, metavar="K",
              help="Folds for cross-fitting with --search (default 5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold assignment.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), metavar="FUSED.npz",
              help="Write the fused scores of the reported ensemble as an mmcl score file.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
def ensemble(
    scores: tuple[Path, ...],
    stream_names: str | None,
    weights: str | None,
    normalize: str,
    intersect: bool,
    labels_file: Path | None,
    data_dir: Path | None,
    benchmark: str | None,
    search: bool,
    search_on: tuple[Path, ...],
    folds: int | None,
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    from mmcl.ensemble import (
        EnsembleRequest,
        labels_from_dataset,
        labels_from_name_list,
        render_report,
        run_ensemble,
    )

    if labels_file is not None and data_dir is not None:
        raise MMCLError("give labels by --labels FILE or by --data DIR --benchmark B, not both")
    if (data_dir is None) != (benchmark is None):
        raise MMCLError("--data and --benchmark go together: the labels are the benchmark's test split")
    source = None
    if labels_file is not None:
        source = labels_from_name_list(labels_file)
    elif data_dir is not None:
        from mmcl.data import open_dataset  # only when asked: keeps start-up light

        source = labels_from_dataset(open_dataset(data_dir), benchmark or "", str(data_dir))
    request = EnsembleRequest(
        scores=list(scores),
        stream_names=stream_names.split(",") if stream_names else None,
        weights=weights,
        normalize=normalize,
        intersect=intersect,
        labels=source,
        search=search or bool(search_on),
        search_on=list(search_on),
        folds=folds,
        seed=seed,
        out=out,
        progress=not as_json,
    )
    results = run_ensemble(request)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(render_report(results))
