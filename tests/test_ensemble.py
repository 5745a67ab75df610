"""``mmcl ensemble``: alignment by name, upstream formats, fusion, honest weight search, CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmcl.cli import main
from mmcl.data.naming import ntu_label, parse_ntu_name
from mmcl.ensemble import (
    EnsembleRequest,
    find_threats,
    fold_split,
    fuse,
    hits,
    labels_from_name_list,
    load_streams,
    normalize_,
    parse_weights,
    render_report,
    run_ensemble,
    search_weights,
)
from mmcl.ensemble.search import _best_point, _LineSearch
from mmcl.errors import MMCLError
from mmcl.scores import load_scores, save_scores

REPO = Path(__file__).resolve().parents[1]
MMCL_NTU120_XSUB = [2.3617, 4.3540, 3.6038, 1.0158, 3.0575, 5.0]  # J, B, JM, BM, HDJ, HDB
SIX = ["j", "b", "jm", "bm", "hdj", "hdb"]


# --------------------------------------------------------------------------------------------
# synthetic streams
# --------------------------------------------------------------------------------------------
def ntu_names(labels: np.ndarray) -> list[str]:
    """Unique NTU-style names whose action number encodes the label."""
    return [
        f"S{i % 32 + 1:03d}C{i // 32 % 3 + 1:03d}P{i // 96 % 106 + 1:03d}R{i // 10176 % 2 + 1:03d}A{y + 1:03d}"
        for i, y in enumerate(labels)
    ]


def make_streams(n: int = 600, k: int = 20, streams: int = 4, seed: int = 0,
                 strengths: list[float] | None = None) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """Label-correlated logits: ``names``, ``labels`` and one [n, k] float32 array per stream."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    shared = rng.standard_normal((n, k))
    strengths = strengths or [2.5 - 0.3 * s for s in range(streams)]
    out = []
    for s in range(streams):
        x = 0.6 * shared + rng.standard_normal((n, k))
        x[np.arange(n), labels] += strengths[s]
        out.append(x.astype(np.float32))
    return ntu_names(labels), labels, out


def write_npz(folder: Path, names: list[str], labels: np.ndarray | None, scores: list[np.ndarray],
              streams: list[str], seed: int = 1, shuffle: bool = True, prefix: str = "") -> list[Path]:
    """One mmcl score file per stream, each in its own random row order."""
    rng = np.random.default_rng(seed)
    paths = []
    for s, (name, x) in enumerate(zip(streams, scores)):
        order = rng.permutation(len(names)) if shuffle and s else np.arange(len(names))
        path = folder / f"{prefix}{name}.npz"
        save_scores(path, [names[i] for i in order], x[order],
                    None if labels is None else labels[order], {"stream": name, "dataset": "ntu120"})
        paths.append(path)
    return paths


def write_pickles(folder: Path, names: list[str], scores: list[np.ndarray], streams: list[str],
                  seed: int = 2) -> list[Path]:
    """Upstream ``epoch1_test_score.pkl`` files: {name: 1-D float32 row}, each in a random order."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, x in zip(streams, scores):
        order = rng.permutation(len(names))
        path = folder / f"NTU120_XSub_{name.upper()}.pkl"
        with open(path, "wb") as fh:
            pickle.dump({names[i]: x[i] for i in order}, fh)
        paths.append(path)
    return paths


def invoke(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, ["ensemble", *map(str, args)], catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# NTU naming rule
# --------------------------------------------------------------------------------------------
def test_ntu_naming_rule() -> None:
    assert parse_ntu_name("S017C003P020R002A058") == {
        "setup": 17, "camera": 3, "subject": 20, "replication": 2, "action": 58}
    assert ntu_label("S001C001P001R001A001") == 0
    assert ntu_label("S001C001P001R001A120.skeleton") == 119
    assert ntu_label("nturgb+d_skeletons/S001C002P003R002A013.skeleton\n") == 12
    for bad in ["S001C001P001R001A01", "S001C001P001R001A001_rgb.avi", "test_0", "S001C001P001R001A000", ""]:
        with pytest.raises(MMCLError, match="NTU"):
            ntu_label(bad)


def test_naming_rule_on_the_real_ntu120_name_list(shared_data: Path) -> None:
    names = (shared_data / "ntu-meta" / "ntu120_available_names.txt").read_text().split()
    labels = np.array([ntu_label(n) for n in names])
    assert len(names) == 113_945
    assert labels.min() == 0 and labels.max() == 119 and len(np.unique(labels)) == 120


# --------------------------------------------------------------------------------------------
# the equivalence test with MMCL's published NTU120 X-Sub weights
# --------------------------------------------------------------------------------------------
def test_mmcl_ntu120_weights_match_an_independent_computation_to_the_sample(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=1500, k=120, streams=6, seed=7)
    pickles = write_pickles(tmp_path, names, scores, SIX)
    val_list = tmp_path / "NTU120_XSub_Val.txt"
    val_list.write_text("\n".join(names) + "\n")
    out = tmp_path / "fused.npz"

    results = run_ensemble(EnsembleRequest(
        scores=pickles, stream_names=SIX, weights=",".join(map(str, MMCL_NTU120_XSUB)),
        labels=labels_from_name_list(val_list), out=out,
    ))

    # independent: plain pickle (these test files are ours), float64, one sample at a time,
    # labels from the last three characters as MMCL's script does
    dicts = []
    for path in pickles:
        with open(path, "rb") as fh:
            dicts.append(pickle.load(fh))
    expected_pred, expected_label = [], []
    for name in val_list.read_text().split():
        total = sum(w * d[name].astype(np.float64) for w, d in zip(MMCL_NTU120_XSUB, dicts))
        expected_pred.append(int(np.argmax(total)))
        expected_label.append(int(name[-3:]) - 1)
    expected_pred, expected_label = np.array(expected_pred), np.array(expected_label)

    fused = load_scores(out)
    row = {n: i for i, n in enumerate(fused.names.tolist())}
    mmcl_pred = fused.scores[[row[n] for n in names]].argmax(axis=1)
    assert np.array_equal(mmcl_pred, expected_pred)  # to the sample
    assert np.array_equal(fused.labels[[row[n] for n in names]], expected_label)
    given = next(e for e in results["ensembles"] if e["name"] == "given weights")
    assert given["top1"] == pytest.approx(float((expected_pred == expected_label).mean()), abs=0)
    assert given["weights"] == dict(zip(SIX, MMCL_NTU120_XSUB))
    assert results["final"] == "given weights"
    # the six streams were scored on their own too, and the fusion beats every one of them
    assert given["top1"] > max(s["top1"] for s in results["streams"])


def test_row_order_does_not_matter_unlike_zipping_by_position(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=400, k=30, streams=3)
    ordered = write_npz(tmp_path, names, labels, scores, ["j", "b", "jm"], shuffle=False, prefix="o_")
    shuffled = write_npz(tmp_path, names, labels, scores, ["j", "b", "jm"], shuffle=True, prefix="s_")
    a = load_streams(ordered)
    b = load_streams(shuffled)
    assert a.names.tolist() == b.names.tolist() == names
    assert np.array_equal(a.scores, b.scores)  # bit for bit, after alignment by name
    # what zipping by position (the upstream scripts) would do with the shuffled files
    raw = [load_scores(p).scores for p in shuffled]
    by_position = (raw[0] + raw[1] + raw[2]).argmax(axis=1) == labels
    by_name = fuse(b.scores, np.ones(3)).argmax(axis=1) == labels
    assert by_name.mean() > 0.6 and by_position.mean() < by_name.mean() - 0.3


def test_ctrgcn_positional_names_are_read_as_lines_of_the_list(tmp_path: Path) -> None:
    """CTR-GCN pickles say test_<i>; with the ordered test list they get the real names."""
    names, labels, scores = make_streams(n=300, k=20, streams=2, seed=9)
    listing = tmp_path / "test_list.txt"
    listing.write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(0)
    paths = []
    for s, x in enumerate(scores):
        path = tmp_path / f"ctrgcn_{s}.pkl"
        path.write_bytes(pickle.dumps({f"test_{i}": x[i] for i in rng.permutation(len(names))}))
        paths.append(path)
    out = tmp_path / "fused.npz"
    results = run_ensemble(EnsembleRequest(scores=paths, labels=labels_from_name_list(listing), out=out))
    expected = (scores[0] + scores[1]).argmax(1) == labels
    assert results["ensembles"][0]["top1"] == pytest.approx(expected.mean(), abs=0)
    assert any("test_<i> read as line i of" in note for note in results["notes"])
    assert sorted(load_scores(out).names.tolist()) == sorted(names)

    listing.write_text("\n".join(names[:100]) + "\n")
    with pytest.raises(MMCLError, match="has test_299 and .*lists only 100 names"):
        run_ensemble(EnsembleRequest(scores=paths, labels=labels_from_name_list(listing)))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_differing_name_sets_give_counts_and_first_missing_names(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=300, k=10, streams=2)
    a = tmp_path / "a.npz"
    save_scores(a, names, scores[0], labels, {"stream": "a"})
    b = tmp_path / "b.npz"
    keep = list(range(3, 300))
    extra = ["S099C001P001R001A001", "S099C001P001R001A002"]
    save_scores(b, [names[i] for i in keep] + extra,
                np.concatenate([scores[1][keep], np.zeros((2, 10), np.float32)]),
                np.concatenate([labels[keep], [0, 1]]), {"stream": "b"})
    with pytest.raises(MMCLError) as info:
        load_streams([a, b])
    message = str(info.value)
    assert "300 vs 299" in message
    assert f"3 of {a}'s are missing from {b} (first: {names[0]}, {names[1]}, {names[2]})" in message
    assert f"2 of {b}'s are not in {a} (first: {extra[0]}, {extra[1]})" in message
    assert "--intersect" in message

    data = load_streams([a, b], intersect=True)
    assert data.names.tolist() == names[3:]
    assert data.dropped == [3, 2]
    assert np.array_equal(data.scores[1], scores[1][3:])
    result = invoke(a, b, "--intersect", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["intersect"]["dropped"] == {str(a): 3, str(b): 2}


def test_class_count_nan_inf_duplicates_and_label_clashes_are_errors(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=50, k=10, streams=1)
    good = tmp_path / "good.npz"
    save_scores(good, names, scores[0], labels, {"stream": "j"})

    wide = tmp_path / "wide.npz"
    save_scores(wide, names, np.zeros((50, 12), np.float32), labels, {"stream": "b"})
    with pytest.raises(MMCLError, match=r"wide.npz has 12 classes but .*good.npz has 10"):
        load_streams([good, wide])

    for bad_value, word in [(np.nan, "nan"), (np.inf, "inf")]:
        x = scores[0].copy()
        x[17, 3] = bad_value
        bad = tmp_path / f"{word}.npz"
        save_scores(bad, names, x, labels, {"stream": "b"})
        with pytest.raises(MMCLError, match=rf"{word}.npz: sample '{names[17]}' has a non-finite score \({word}\) for class 3"):
            load_streams([good, bad])

    dup = tmp_path / "dup.npz"
    save_scores(dup, names[:49] + [names[5]], scores[0], labels, {"stream": "b"})
    with pytest.raises(MMCLError, match=rf"dup.npz: 1 sample name\(s\) appear more than once \(first: {names[5]}\)"):
        load_streams([good, dup])

    other = labels.copy()
    other[8] = (other[8] + 1) % 10
    clash = tmp_path / "clash.npz"
    save_scores(clash, names, scores[0], other, {"stream": "b"})
    with pytest.raises(MMCLError, match=rf"labels disagree for sample '{names[8]}'"):
        load_streams([good, clash])

    renamed = tmp_path / "classes.npz"
    save_scores(renamed, names, scores[0], labels, {"stream": "b", "class_names": list("abcdefghij")})
    save_scores(tmp_path / "classes2.npz", names, scores[0], labels, {"stream": "c", "class_names": list("jihgfedcba")})
    with pytest.raises(MMCLError, match="disagree on class_names"):
        load_streams([renamed, tmp_path / "classes2.npz"])


def test_label_list_must_match_the_scores_and_agree_with_file_labels(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=80, k=10, streams=2)
    paths = write_npz(tmp_path, names, None, scores, ["j", "b"])
    short = tmp_path / "short.txt"
    short.write_text("\n".join(names[:-2]) + "\n")
    with pytest.raises(MMCLError, match=r"80 vs 78 names.*2 of .*j.npz's are missing from .*short.txt \(first"):
        run_ensemble(EnsembleRequest(scores=paths, labels=labels_from_name_list(short)))
    results = run_ensemble(EnsembleRequest(scores=paths, labels=labels_from_name_list(short), intersect=True))
    assert results["num_samples"] == 78

    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n\n" + "\n".join(n + ".skeleton" for n in names) + "\n")
    results = run_ensemble(EnsembleRequest(scores=paths, labels=labels_from_name_list(listing)))
    expected = (fuse(load_streams(paths).scores, np.ones(2)).argmax(1) == labels).mean()
    assert results["ensembles"][0]["top1"] == pytest.approx(expected, abs=0)

    broken = tmp_path / "broken.txt"
    broken.write_text(names[0] + "\nnot_a_name\n")
    with pytest.raises(MMCLError, match=r"broken.txt, line 2: 'not_a_name' is not an NTU"):
        labels_from_name_list(broken)

    wrong = labels.copy()
    wrong[4] = (wrong[4] + 3) % 10
    labelled = write_npz(tmp_path, names, wrong, scores, ["j", "b"], prefix="l_")
    with pytest.raises(MMCLError, match=rf"labels disagree for sample '{names[4]}'"):
        run_ensemble(EnsembleRequest(scores=labelled, labels=labels_from_name_list(listing)))

    ntu120 = [n[:-3] + "099" for n in names]  # NTU120 names scored by a 10-class model
    big = tmp_path / "big.txt"
    big.write_text("\n".join(ntu120) + "\n")
    save_scores(tmp_path / "ten.npz", ntu120, scores[0], None, {})
    with pytest.raises(MMCLError, match=rf"big.txt: sample '{ntu120[0]}' has label 98, but the scores have only 10"):
        run_ensemble(EnsembleRequest(scores=[tmp_path / "ten.npz"], labels=labels_from_name_list(big)))


def test_missing_labels(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=60, k=10, streams=2)
    paths = write_npz(tmp_path, names, None, scores, ["j", "b"])
    results = run_ensemble(EnsembleRequest(scores=paths))
    assert results["labels"] is None and results["ensembles"][0]["top1"] is None
    assert "fusion only" in render_report(results)
    with pytest.raises(MMCLError, match="--search needs labels"):
        run_ensemble(EnsembleRequest(scores=paths, search=True))
    partial = labels.copy()
    partial[:5] = -1
    half = write_npz(tmp_path, names, partial, scores, ["j", "b"], prefix="p_", shuffle=False)
    with pytest.raises(MMCLError, match=rf"5 of 60 samples have no label \(first: {names[0]}"):
        run_ensemble(EnsembleRequest(scores=half))


def test_upstream_pickles_with_bad_content_are_clear_errors(tmp_path: Path) -> None:
    cases = {
        "list.pkl": [1, 2, 3],
        "ragged.pkl": {"a": np.zeros(3), "b": np.zeros(4)},
        "empty.pkl": {},
        "text.pkl": {"a": np.array(["x", "y"])},
    }
    messages = {
        "list.pkl": "expected a pickled dict",
        "ragged.pkl": r"sample 'b' has scores of shape \(4,\)",
        "empty.pkl": "the score dict is empty",
        "text.pkl": "scores must be numbers",
    }
    for name, obj in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(MMCLError, match=messages[name]):
            load_streams([path])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MMCLError, match="unknown score format"):
        load_streams([tmp_path / "notes.txt"])


def test_weights_parsing() -> None:
    streams = ["j", "b", "jm", "bm"]
    assert parse_weights("0.6,0.6,0.4,0.4", streams).tolist() == [0.6, 0.6, 0.4, 0.4]
    assert parse_weights("bm=1, jm=1,b=2,j=2", streams).tolist() == [2, 2, 1, 1]
    for text, match in [
        ("1,2,3", "3 numbers for 4 streams"),
        ("j=1,b=1,jm=1,x=1", "unknown stream 'x'"),
        ("j=1,b=1,jm=1", "no weight for stream"),
        ("j=1,j=2,b=1,jm=1,bm=1", "given twice"),
        ("j=1,2,3,4", "either all plain numbers or all name=value"),
        ("1,-1,1,1", "non-negative"),
        ("0,0,0,0", "all zero"),
        ("1,nan,1,1", "finite"),
        ("1,a,1,1", "'a' .* is not a number"),
    ]:
        with pytest.raises(MMCLError, match=match):
            parse_weights(text, streams)


def test_incompatible_options_are_refused(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=40, k=5, streams=2)
    paths = write_npz(tmp_path, names, labels, scores, ["j", "b"])
    for kwargs, match in [
        ({"weights": "1,1", "search": True}, "give one"),
        ({"folds": 3}, "--folds only applies with --search"),
        ({"search_on": paths, "folds": 3}, "cannot go with --search-on"),
        ({"search_on": paths[:1]}, "1 validation files for 2 streams"),
        ({"normalize": "l2"}, "unknown normalization"),
        ({"stream_names": ["j"]}, "1 stream names for 2 score files"),
        ({"stream_names": ["j", "j"]}, "must be unique"),
    ]:
        with pytest.raises(MMCLError, match=match):
            run_ensemble(EnsembleRequest(scores=paths, **kwargs))


# --------------------------------------------------------------------------------------------
# normalisation, metrics, per-class report
# --------------------------------------------------------------------------------------------
def test_normalizations_and_their_fusion(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=200, k=15, streams=3)
    x = np.stack(scores).copy()
    normalize_(x, "softmax")
    assert np.allclose(x.sum(axis=2), 1, atol=1e-5)
    assert np.array_equal(x.argmax(axis=2), np.stack(scores).argmax(axis=2))
    z = np.stack(scores).copy()
    normalize_(z, "zscore")
    assert np.allclose(z.mean(axis=2), 0, atol=1e-5) and np.allclose(z.std(axis=2), 1, atol=1e-4)

    paths = write_npz(tmp_path, names, labels, scores, ["j", "b", "jm"])
    results = run_ensemble(EnsembleRequest(scores=paths, normalize="softmax", weights="1,2,0.5"))
    ref = sum(w * np.exp(s.astype(np.float64)) / np.exp(s.astype(np.float64)).sum(1, keepdims=True)
              for w, s in zip([1, 2, 0.5], scores))
    given = results["ensembles"][1]
    assert given["top1"] == pytest.approx((ref.argmax(1) == labels).mean(), abs=0)


def test_topk_counts_classes_strictly_above_the_truth() -> None:
    row = np.arange(10, 0, -1, dtype=np.float32)[None].repeat(3, 0)  # class c has rank c
    top1, top5 = hits(row, np.array([0, 4, 5]))
    assert top1.tolist() == [True, False, False]
    assert top5.tolist() == [True, True, False]


def test_per_class_accuracy_and_fixes_and_breaks(tmp_path: Path) -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    eye = np.eye(3, dtype=np.float32)
    a = eye[[0, 0, 1, 0, 2, 1]] * np.array([1, 3, 1, 3, 1, 1], np.float32)[:, None]
    b = eye[[0, 1, 1, 1, 2, 2]] * np.array([1, 1, 1, 1, 1, 2], np.float32)[:, None]
    names = ntu_names(y)
    save_scores(tmp_path / "a.npz", names, a, y, {"stream": "a", "class_names": ["x", "y", "z"]})
    save_scores(tmp_path / "b.npz", names, b, y, {"stream": "b", "class_names": ["x", "y", "z"]})
    results = run_ensemble(EnsembleRequest(scores=[tmp_path / "a.npz", tmp_path / "b.npz"]))
    assert results["best_stream"] == "b"
    assert [s["top1"] for s in results["streams"]] == pytest.approx([4 / 6, 5 / 6])
    assert results["ensembles"][0]["top1"] == pytest.approx(5 / 6)
    assert results["fixed"] == 1 and results["broken"] == 1
    per = {r["class"]: r for r in results["per_class"]}
    assert per[0] == {"class": 0, "name": "x", "samples": 2, "best_stream_top1": 0.5,
                      "ensemble_top1": 1.0, "fixed": 1, "broken": 0}
    assert (per[1]["best_stream_top1"], per[1]["ensemble_top1"], per[1]["broken"]) == (1.0, 0.5, 1)
    text = render_report(results)
    assert "fixes 1 samples and breaks 1" in text and "Most fixed classes: x (1)" in text


# --------------------------------------------------------------------------------------------
# weight search
# --------------------------------------------------------------------------------------------
def test_threats_are_the_pairs_where_weights_matter() -> None:
    y = np.array([0, 0, 1])
    x = np.array([
        [[3, 1, 0], [1, 2, 0], [0, 5, 1]],  # stream 0
        [[3, 0, 1], [1, 0, 2], [0, 4, 9]],  # stream 1
    ], dtype=np.float32)
    threats = find_threats(x, y)
    # sample 0: true class best in both streams; sample 1: each stream prefers another class;
    # sample 2: class 2 wins in stream 1 only, class 1 wins in stream 0 only
    assert threats.always_right.tolist() == [True, False, False]
    assert threats.always_wrong.tolist() == [False, False, False]
    assert threats.sample.tolist() == [1, 1, 2]
    assert threats.margin.tolist() == [[-1, 1, 4], [1, -1, -5]]
    x[1, 1] = [1, 5, 0]  # now class 1 beats the true class of sample 1 in both streams
    assert find_threats(x, y).always_wrong.tolist() == [False, True, False]
    x[0, 1], x[1, 1] = [2, 2, 0], [3, 1, 0]  # a tie in stream 0, the true class wins stream 1
    threats = find_threats(x, y)
    assert threats.always_wrong.tolist() == [False, False, False]
    assert threats.sample.tolist() == [1, 2] and threats.margin[:, 0].tolist() == [0, 2]
    x[1, 1] = [2, 2, 0]  # tied in both streams: never a strict win
    assert find_threats(x, y).always_wrong.tolist() == [False, True, False]


@pytest.mark.parametrize("quantized", [False, True])
def test_line_search_is_exact_against_a_dense_grid(quantized: bool) -> None:
    """The sweep's count is the real number of strict wins at the chosen weight, and no weight
    on a dense grid does better. Quantized scores make ties (zero margins) common."""
    rng = np.random.default_rng(3)
    n, k = 300, 8
    y = rng.integers(0, k, n)
    if quantized:
        x = rng.integers(0, 4, (3, n, k)).astype(np.float32)
    else:
        x = rng.standard_normal((3, n, k)).astype(np.float32)
    x[0, np.arange(n), y] += 1.0
    x[1, np.arange(n), y] += 0.8
    weights = np.array([0.7, 0.3, 0.5])
    search = _LineSearch(find_threats(x, y), np.arange(n))
    assert 0 < len(search.contested) < n

    for s in range(3):
        def strict_wins(value: float) -> int:
            w = weights.copy()
            w[s] = value
            f = np.einsum("s,snk->nk", w, x.astype(np.float64))
            true = f[np.arange(n), y]
            f[np.arange(n), y] = -np.inf
            return int((true > f.max(axis=1)).sum())

        lo, hi = search.intervals(weights, s)
        t, count = _best_point(lo, hi, float(weights[s]), allow_zero=True)
        assert count + search.always_right == strict_wins(t)
        assert count + search.always_right >= max(strict_wins(v) for v in np.linspace(0, 1, 801))


def test_search_drops_a_useless_loud_stream() -> None:
    rng = np.random.default_rng(5)
    n, k = 800, 20
    y = rng.integers(0, k, n)
    x = rng.standard_normal((3, n, k)).astype(np.float32)
    x[0, np.arange(n), y] += 2.5
    x[1, np.arange(n), y] += 2.0
    x[2] *= 4.0  # pure noise, large scale
    equal = (fuse(x, np.ones(3)).argmax(1) == y).mean()
    found = search_weights(x, y)
    assert found.weights.max() == 1.0 and found.weights[2] < 0.1 * found.weights[:2].max()
    assert found.correct / found.total == pytest.approx((fuse(x, found.weights).argmax(1) == y).mean(), abs=0)
    assert found.correct / found.total > equal + 0.2


def test_kfold_cross_fitting_is_out_of_fold_and_labelled(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=500, k=12, streams=3, seed=11, strengths=[2.2, 1.8, 0.6])
    paths = write_npz(tmp_path, names, labels, scores, ["j", "b", "jm"])
    out = tmp_path / "oof.npz"
    results = run_ensemble(EnsembleRequest(scores=paths, search=True, folds=4, seed=3, out=out))

    by_name = {e["name"]: e for e in results["ensembles"]}
    oof = by_name["searched (4-fold cross-fit)"]
    optimistic = by_name["searched on all test samples"]
    assert results["final"] == oof["name"] and oof["weights"] is None and not oof["optimistic"]
    assert optimistic["optimistic"] and "OPTIMISTIC" in optimistic["protocol"]
    assert results["search"]["protocol"] == "kfold" and results["search"]["seed"] == 3

    # recompute the out-of-fold scores from the reported per-fold weights
    stack = load_streams(paths).scores
    fused = load_scores(out)
    assert fused.names.tolist() == names
    parts = fold_split(len(names), 4, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(names)))
    for part, fold in zip(parts, results["search"]["fold_results"]):
        w = np.array([fold["weights"][s] for s in ["j", "b", "jm"]])
        assert np.array_equal(fused.scores[part], fuse(stack, w, part))
        assert fold["samples"] == len(part)
    assert oof["top1"] == pytest.approx((fused.scores.argmax(1) == labels).mean(), abs=0)
    assert fused.meta["ensemble"]["protocol"].startswith("out-of-fold")
    assert len(fused.meta["ensemble"]["fold_weights"]) == 4

    text = render_report(results)
    assert "OPTIMISTIC" in text and "out-of-fold" in text and "NEW data only" in text
    # the fold assignment depends on the seed
    assert not all(np.array_equal(a, b) for a, b in zip(parts, fold_split(len(names), 4, 4)))


def test_validation_search_never_uses_the_test_labels(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=900, k=12, streams=3, seed=21, strengths=[2.2, 1.8, 0.6])
    val_names, test_names = names[:400], names[400:]
    val_dir, test_dir = tmp_path / "val", tmp_path / "test"
    val_dir.mkdir(), test_dir.mkdir()
    val = write_npz(val_dir, val_names, labels[:400], [s[:400] for s in scores], ["j", "b", "jm"])
    rng = np.random.default_rng(0)
    weights_seen = []
    for trial in range(2):
        test_labels = labels[400:] if trial == 0 else rng.permutation(labels[400:])
        test = write_npz(test_dir, test_names, test_labels, [s[400:] for s in scores], ["j", "b", "jm"])
        results = run_ensemble(EnsembleRequest(scores=test, search_on=val, search=True))
        entry = results["ensembles"][-1]
        weights_seen.append(entry["weights"])
        w = np.array([entry["weights"][s] for s in ["j", "b", "jm"]])
        stack = np.stack([s[400:] for s in scores])
        assert entry["top1"] == pytest.approx((fuse(stack, w).argmax(1) == test_labels).mean(), abs=0)
        assert results["search"]["protocol"] == "validation" and results["search"]["validation_samples"] == 400
        assert "never used" in entry["protocol"] and not entry["optimistic"]
        assert results["final"] == "searched (validation)"
        assert results["weights_used"] == entry["weights_arg"]
    assert weights_seen[0] == weights_seen[1]  # scrambled test labels, same weights

    with pytest.raises(MMCLError, match="also test samples"):
        run_ensemble(EnsembleRequest(scores=test, search_on=test, search=True))
    swapped = [val[1], val[0], val[2]]
    with pytest.raises(MMCLError, match="is stream 'b' but the test file in that position"):
        run_ensemble(EnsembleRequest(scores=test, search_on=swapped, search=True))


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def test_cli_table_json_and_out(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=300, k=20, streams=4)
    paths = write_npz(tmp_path, names, labels, scores, ["j", "b", "jm", "bm"])
    result = invoke(*paths, "--weights", "j=0.6,b=0.6,jm=0.4,bm=0.4")
    assert result.exit_code == 0, result.output
    for text in ["top-1 %", "equal weights", "given weights", "--weights j=0.6,b=0.6,jm=0.4,bm=0.4",
                 "Per-class top-1", "the ensemble fixes"]:
        assert text in result.output

    out = tmp_path / "fused.npz"
    result = invoke(*paths, "--names", "J,B,JM,BM", "--out", out, "--json", "--normalize", "zscore")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [s["name"] for s in data["streams"]] == ["J", "B", "JM", "BM"]
    assert data["normalize"] == "zscore" and data["out"] == str(out)
    fused = load_scores(out)
    assert fused.names.tolist() == names and fused.labels.tolist() == labels.tolist()
    assert fused.meta["stream"] == "ensemble" and fused.meta["ensemble"]["weights"] == {s: 1.0 for s in "J B JM BM".split()}
    assert fused.meta["dataset"] == "ntu120"
    assert data["ensembles"][0]["top1"] == pytest.approx((fused.scores.argmax(1) == labels).mean(), abs=0)


def test_cli_search_on_takes_several_files_and_help_teaches(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=400, k=10, streams=2, seed=4)
    val = write_npz(tmp_path, names[:200], labels[:200], [s[:200] for s in scores], ["j", "b"], prefix="v_")
    test = write_npz(tmp_path, names[200:], labels[200:], [s[200:] for s in scores], ["j", "b"], prefix="t_")
    result = invoke(*test, "--search-on", *val, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["search"]["validation_files"] == [str(p) for p in val]
    result = invoke(*test, "--search-on", val[0], "--search-on", val[1], "--json")
    assert json.loads(result.output)["search"]["validation_files"] == [str(p) for p in val]

    help_text = invoke("--help").output
    for text in ["Examples:", "--search-on", "--intersect", "NTU120_XSub_Val.txt", "OPTIMISTIC"]:
        assert text in help_text


def test_cli_errors_are_clean_messages(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=30, k=5, streams=2)
    a = write_npz(tmp_path, names, labels, scores, ["j", "b"])[0]
    b = tmp_path / "short.npz"
    save_scores(b, names[:-1], scores[1][:-1], labels[:-1], {"stream": "b"})
    result = CliRunner().invoke(main, ["ensemble", str(a), str(b)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "30 vs 29" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["ensemble", str(a), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "--data and --benchmark go together" in result.output


def test_cli_labels_from_a_prepared_dataset(tmp_path: Path) -> None:
    from mmcl.data import open_dataset
    from mmcl.data.store import DatasetWriter, Sample
    from mmcl.graphs import get_layout

    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    names = ntu_names(labels)
    layout = get_layout("ntu")
    with DatasetWriter(tmp_path / "ds", name="tiny", layout=layout, num_person=2, channels=3,
                       class_names=["a", "b", "c", "d"], has_colors=False, meta_fields=[],
                       source={"kind": "test"}) as writer:
        for name, y in zip(names, labels):
            writer.add(Sample(name, int(y), np.zeros((4, 2, layout.num_joints, 3), np.float32)))
        writer.finish({"xsub": {"train": names[:4], "test": names[4:]}})
    assert open_dataset(tmp_path / "ds").names == names

    rng = np.random.default_rng(0)
    test_names, test_labels = names[4:], labels[4:]
    x = rng.standard_normal((6, 4)).astype(np.float32)
    x[np.arange(6), test_labels] += 3
    save_scores(tmp_path / "j.npz", test_names, x, None, {"stream": "j"})
    result = invoke(tmp_path / "j.npz", "--data", tmp_path / "ds", "--benchmark", "xsub", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["streams"][0]["top1"] == pytest.approx((x.argmax(1) == test_labels).mean())
    assert data["per_class"][0]["name"] == "a"
    result = CliRunner().invoke(main, ["ensemble", str(tmp_path / "j.npz"), "--data", str(tmp_path / "ds"),
                                       "--benchmark", "xview"])
    assert result.exit_code == 1 and "no benchmark 'xview'" in result.output and "xsub" in result.output


def test_real_process_run_reads_pickles_and_never_imports_torch(tmp_path: Path) -> None:
    names, labels, scores = make_streams(n=200, k=60, streams=2)
    pickles = write_pickles(tmp_path, names, scores, ["j", "b"])
    listing = tmp_path / "NTU60_XSub_Val.txt"
    listing.write_text("\n".join(names) + "\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmcl", "ensemble", *map(str, pickles),
         "--labels", str(listing), "--names", "j,b", "--weights", "j=2,b=1", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    expected = (2 * scores[0].astype(np.float64) + scores[1]).argmax(1) == labels
    assert data["ensembles"][1]["top1"] == pytest.approx(expected.mean(), abs=0)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "mmcl.ensemble" in imported and "numpy" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}

    bad = subprocess.run([sys.executable, "-m", "mmcl", "ensemble", str(pickles[0]), str(tmp_path / "nope.npz")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 1 and "nope.npz: no such score file" in bad.stderr

