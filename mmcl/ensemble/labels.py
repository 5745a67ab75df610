"""Label sources for ``mmcl ensemble``: the score files, an NTU name list, a prepared dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mmcl.errors import MMCLError
from mmcl.scores import check_labels

if TYPE_CHECKING:
    from mmcl.ensemble.inputs import ScoreSet


@dataclass
class LabelSource:
    """Where labels come from when the score files do not carry them.

    ``names`` is the evaluation set the source defines (the name list, or the dataset's test
    split): the score files must cover exactly it. ``label_of`` maps names to labels, -1 where
    it has none.
    """

    description: str
    names: np.ndarray | None
    label_of: Callable[[np.ndarray], np.ndarray]
    class_names: list[str] | None = None
    origin: str = "the labels"  # short name for error messages (the list file, the dataset)


def labels_from_name_list(path: Path) -> LabelSource:
    """A file with one NTU sample name per line (e.g. upstream ``NTU120_XSub_Val.txt``).

    Lines may carry a ``.skeleton`` suffix or a folder; blank lines and ``#`` comments are
    skipped. Labels come from the naming rule, ``A### - 1``.
    """
    from mmcl.data.naming import ntu_label, parse_ntu_name

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MMCLError(f"{path}: no such name list") from None
    except UnicodeDecodeError as exc:
        raise MMCLError(f"{path}: not a text name list ({exc})") from None
    names: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parse_ntu_name(line)
        except MMCLError as exc:
            raise MMCLError(f"{path}, line {lineno}: {exc}") from None
        stem = line.replace("\\", "/").rsplit("/", 1)[-1]
        names.append(stem[: -len(".skeleton")] if stem.endswith(".skeleton") else stem)
    if not names:
        raise MMCLError(f"{path}: the name list is empty")

    def label_of(query: np.ndarray) -> np.ndarray:
        out = np.empty(len(query), dtype=np.int64)
        for i, name in enumerate(query.tolist()):
            try:
                out[i] = ntu_label(name)
            except MMCLError as exc:
                raise MMCLError(f"cannot label sample from its name via {path}: {exc}") from None
        return out

    return LabelSource(
        description=f"NTU naming rule (A### - 1) on the names in {path}",
        names=np.asarray(names, dtype=str),
        label_of=label_of,
        origin=str(path),
    )


def labels_from_dataset(dataset: Any, benchmark: str, where: str) -> LabelSource:
    """Labels of a prepared dataset (``mmcl.data.open_dataset``); the test split is the set."""
    splits = dataset.splits
    if benchmark not in splits:
        raise MMCLError(f"{where}: no benchmark {benchmark!r}; this dataset has {sorted(splits)}")
    test = splits[benchmark].get("test")
    if not test:
        raise MMCLError(f"{where}: benchmark {benchmark!r} has no test split")
    table = dict(zip(list(dataset.names), np.asarray(dataset.labels).tolist()))

    def label_of(query: np.ndarray) -> np.ndarray:
        return np.fromiter((table.get(n, -1) for n in query.tolist()), np.int64, len(query))

    class_names = list(getattr(dataset, "class_names", None) or []) or None
    return LabelSource(
        description=f"prepared dataset {where}, benchmark {benchmark} (test split)",
        names=np.asarray(test, dtype=str),
        label_of=label_of,
        class_names=class_names,
        origin=f"{where} ({benchmark} test split)",
    )


def merge_labels(
    data_labels: np.ndarray,
    label_from: np.ndarray,
    new: np.ndarray,
    names: np.ndarray,
    source: int,
    sources: Sequence[Any],
) -> None:
    """Fill unknown labels from ``new`` (source number ``source``); a disagreement is an error."""
    known = new >= 0
    if not known.any():
        return
    clash = known & (data_labels >= 0) & (data_labels != new)
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise MMCLError(
            f"labels disagree for sample {str(names[i])!r}: {sources[source]} says {new[i]}, "
            f"{sources[label_from[i]]} says {data_labels[i]} ({int(clash.sum())} sample(s) disagree)"
        )
    fill = known & (data_labels < 0)
    data_labels[fill] = new[fill]
    label_from[fill] = source


def attach_labels(data: ScoreSet, source: LabelSource | None) -> None:
    """Fill ``data.labels`` from ``source``, checking it against the labels the files carry."""
    if source is None:
        return
    new = source.label_of(data.names)
    sources = [*map(str, data.files), source.origin]
    merge_labels(data.labels, data.label_from, new, data.names, len(data.files), sources)
    check_labels(Path(source.origin), data.names, data.labels, data.num_classes)
    if source.class_names and data.class_names is None:
        data.class_names = source.class_names
