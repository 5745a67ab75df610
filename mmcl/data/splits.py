"""Benchmark splits: which samples train and which test, in the order CTR-GCN uses.

``split_names(dataset, benchmark, names)`` is the public entry point. A rule keeps CTR-GCN's
order: samples grouped by the ID lists in the order the lists give them, and the order of
``names`` (file order) within a group. Published score files and test lists depend on that
order, so ``mmcl prepare`` and the tests both use this module.

Each dataset registers its benchmarks in :data:`RULES`: ``{dataset: {benchmark: rule}}``, where a
rule maps the sample names to ``(train, test)``. :func:`grouped_split` builds the common kind.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from mmcl.data.naming import parse_ntu_name
from mmcl.data.ucla import parse_ucla_name
from mmcl.data.utd_mhad import parse_utd_name
from mmcl.errors import MMCLError

SplitRule = Callable[[Sequence[str]], "tuple[list[str], list[str]]"]


def grouped_split(
    names: Sequence[str],
    key: Callable[[str], int],
    train_ids: Iterable[int],
    test_ids: Iterable[int],
    *,
    what: str,
) -> tuple[list[str], list[str]]:
    """Group ``names`` by ``key(name)``; train = the groups of ``train_ids`` in that order, test =
    those of ``test_ids``; file order within a group. A name whose key is in neither list is an
    error (mmcl never drops samples silently)."""
    train_ids, test_ids = list(train_ids), list(test_ids)
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(key(name), []).append(name)
    stray = sorted(set(groups) - set(train_ids) - set(test_ids))
    if stray:
        example = groups[stray[0]][0]
        raise MMCLError(
            f"sample {example} has {what} {stray[0]}, which is in neither the train list "
            f"{train_ids} nor the test list {test_ids}"
        )
    train = [n for i in train_ids for n in groups.get(i, ())]
    test = [n for i in test_ids for n in groups.get(i, ())]
    return train, test


def _ntu_field(field: str) -> Callable[[str], int]:
    return lambda name: parse_ntu_name(name)[field]


NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103,
)


def _rest(train: Sequence[int], last: int) -> list[int]:
    return [i for i in range(1, last + 1) if i not in train]


def ntu60_xsub(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cross-subject: 20 training subjects, the other 20 of 1-40 test."""
    return grouped_split(names, _ntu_field("subject"), NTU60_XSUB_TRAIN, _rest(NTU60_XSUB_TRAIN, 40), what="subject")


def ntu60_xview(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cross-view: cameras 2 then 3 train, camera 1 tests."""
    return grouped_split(names, _ntu_field("camera"), (2, 3), (1,), what="camera")


def ntu120_xsub(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cross-subject: 53 training subjects, the rest of 1-106 test."""
    return grouped_split(names, _ntu_field("subject"), NTU120_XSUB_TRAIN, _rest(NTU120_XSUB_TRAIN, 106), what="subject")


def ntu120_xset(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cross-setup: even setups 2-32 train, odd setups 1-31 test."""
    return grouped_split(names, _ntu_field("setup"), range(2, 33, 2), range(1, 32, 2), what="setup")


def ucla_xview(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """NW-UCLA cross-view (CTR-GCN's protocol): views 1 then 2 train, view 3 tests."""
    return grouped_split(names, lambda n: parse_ucla_name(n)["view"], (1, 2), (3,), what="view")


def utd_mhad_xsub(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """UTD-MHAD cross-subject: odd subjects 1, 3, 5, 7 train, even subjects 2, 4, 6, 8 test."""
    return grouped_split(names, lambda n: parse_utd_name(n)["subject"], (1, 3, 5, 7), (2, 4, 6, 8), what="subject")


SYNTHETIC_XSUB_TRAIN = (1, 2, 3, 4)  # of the synthetic set's performers 1-8


def synthetic_xsub(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Synthetic cross-performer: performers 1-4 train, 5-8 test (each has their own body size)."""
    return grouped_split(names, _ntu_field("subject"), SYNTHETIC_XSUB_TRAIN, _rest(SYNTHETIC_XSUB_TRAIN, 8), what="performer")


def synthetic_xview(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Synthetic cross-view, as NTU's: cameras 2 then 3 train, camera 1 tests."""
    return grouped_split(names, _ntu_field("camera"), (2, 3), (1,), what="camera")


# dataset -> benchmark -> rule. Other datasets add their entries here.
RULES: dict[str, dict[str, SplitRule]] = {
    "ntu60": {"xsub": ntu60_xsub, "xview": ntu60_xview},
    "ntu120": {"xsub": ntu120_xsub, "xset": ntu120_xset},
    "ucla": {"xview": ucla_xview},
    "utd-mhad": {"xsub": utd_mhad_xsub},
    "synthetic": {"xsub": synthetic_xsub, "xview": synthetic_xview},
}


def benchmarks(dataset: str) -> list[str]:
    """The benchmark names of a dataset."""
    if dataset not in RULES:
        raise MMCLError(f"no split rules for dataset {dataset!r}; known: {sorted(RULES)}")
    return list(RULES[dataset])


def split_names(dataset: str, benchmark: str, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train_names, test_names) of one benchmark, in CTR-GCN's order."""
    rules: Mapping[str, SplitRule] = RULES.get(dataset, {})
    if benchmark not in rules:
        raise MMCLError(
            f"unknown benchmark {benchmark!r} for {dataset!r}; expected one of {benchmarks(dataset)}"
        )
    return rules[benchmark](names)


def all_splits(dataset: str, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Every benchmark of a dataset, in the ``splits.json`` shape."""
    out = {}
    for benchmark in benchmarks(dataset):
        train, test = split_names(dataset, benchmark, names)
        out[benchmark] = {"train": train, "test": test}
    return out
