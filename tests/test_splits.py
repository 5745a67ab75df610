"""Split rules: CTR-GCN's counts on the full NTU name lists, its order, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcl.data import splits
from mmcl.data.splits import split_names
from mmcl.errors import MMCLError

COUNTS = {
    ("ntu60", "xsub"): (40091, 16487),
    ("ntu60", "xview"): (37646, 18932),
    ("ntu120", "xsub"): (63026, 50919),
    ("ntu120", "xset"): (54468, 59477),
}


@pytest.fixture(scope="module")
def full_names(shared_data: Path) -> dict[str, list[str]]:
    meta = shared_data / "ntu-meta"
    return {ds: (meta / f"{ds}_available_names.txt").read_text().split() for ds in ("ntu60", "ntu120")}


@pytest.mark.parametrize("dataset, benchmark", sorted(COUNTS))
def test_counts_on_the_full_name_lists(full_names, dataset, benchmark):
    names = full_names[dataset]
    train, test = split_names(dataset, benchmark, names)
    assert (len(train), len(test)) == COUNTS[dataset, benchmark]
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == len(names)


FIELD_SLICE = {"xsub": slice(9, 12), "xview": slice(5, 8), "xset": slice(1, 4)}  # SsssCcccPppp...


@pytest.mark.parametrize("dataset, benchmark", sorted(COUNTS))
def test_order_is_grouped_by_id_list_then_file_order(full_names, dataset, benchmark):
    names = full_names[dataset]
    position = {n: i for i, n in enumerate(names)}
    train, test = split_names(dataset, benchmark, names)
    field = FIELD_SLICE[benchmark]
    for part, ids in ((train, _train_ids(dataset, benchmark)), (test, _test_ids(dataset, benchmark))):
        keys = [int(n[field]) for n in part]
        groups = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
        assert groups == [i for i in ids if i in set(keys)]  # one run per ID, in list order
        for i in range(len(part) - 1):
            if keys[i] == keys[i + 1]:
                assert position[part[i]] < position[part[i + 1]]


def _train_ids(dataset, benchmark):
    return {
        ("ntu60", "xsub"): list(splits.NTU60_XSUB_TRAIN),
        ("ntu60", "xview"): [2, 3],
        ("ntu120", "xsub"): list(splits.NTU120_XSUB_TRAIN),
        ("ntu120", "xset"): list(range(2, 33, 2)),
    }[dataset, benchmark]


def _test_ids(dataset, benchmark):
    last = {("ntu60", "xsub"): 40, ("ntu120", "xsub"): 106}
    if (dataset, benchmark) in last:
        train = _train_ids(dataset, benchmark)
        return [i for i in range(1, last[dataset, benchmark] + 1) if i not in train]
    return [1] if benchmark == "xview" else list(range(1, 32, 2))


def test_id_lists_are_the_published_ones():
    assert splits.NTU60_XSUB_TRAIN == (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
    assert len(splits.NTU120_XSUB_TRAIN) == 53 and splits.NTU120_XSUB_TRAIN[-3:] == (98, 100, 103)


def test_camera_order_in_xview():
    names = ["S001C003P001R001A001", "S001C001P001R001A001", "S001C002P001R001A001", "S002C002P001R001A001"]
    assert split_names("ntu60", "xview", names) == (
        ["S001C002P001R001A001", "S002C002P001R001A001", "S001C003P001R001A001"],
        ["S001C001P001R001A001"],
    )


def test_errors_are_clear():
    with pytest.raises(MMCLError, match="subject 41, which is in neither"):
        split_names("ntu60", "xsub", ["S001C001P041R001A001"])
    with pytest.raises(MMCLError, match="unknown benchmark 'xset' for 'ntu60'"):
        split_names("ntu60", "xset", [])
    with pytest.raises(MMCLError, match="no split rules for dataset 'kinetics'"):
        split_names("kinetics", "xsub", [])
    with pytest.raises(MMCLError, match="not an NTU RGB\\+D sample name"):
        split_names("ntu120", "xset", ["a01_s01_e01_v01"])


def test_other_datasets_register_rules():
    assert {"ntu60", "ntu120"} <= set(splits.RULES)
    assert splits.benchmarks("ntu120") == ["xsub", "xset"]
    for dataset, rules in splits.RULES.items():
        assert rules and all(callable(rule) for rule in rules.values()), dataset
