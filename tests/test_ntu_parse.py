"""The Kinect v2 .skeleton reader: both readers (the compiled one for well-formed files and the
NumPy one) against a plain line-by-line reader, line endings, odd number formats, malformed
files, and the NTU metadata that ships with mmcl."""

from __future__ import annotations

import re
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from mmcl.data import ntu
from mmcl.data.sources import SampleError


def read_plain(text: str) -> list[list[tuple[str, np.ndarray, np.ndarray]]]:
    """Independent reference: per file frame, the (bodyID, xyz (25, 3), colour (25, 2)) of each body."""
    lines = text.splitlines()
    frames, i = [], 1
    for _ in range(int(lines[0])):
        bodies = []
        for _ in range(int(lines[i])):
            body_id = lines[i + 1].split()[0]
            rows = [lines[i + 3 + j].split() for j in range(int(lines[i + 2]))]
            xyz = np.array([r[:3] for r in rows], dtype=np.float32)
            col = np.array([r[5:7] for r in rows], dtype=np.float32)
            bodies.append((body_id, xyz, col))
            i += 2 + len(rows)
        i += 1
        frames.append(bodies)
    return frames


def assert_same_as_plain(raw: ntu.RawSkeleton, text: str) -> None:
    frames = read_plain(text)
    instances = [(f, b) for f, bodies in enumerate(frames) for b in bodies]
    assert len(instances) == len(raw.joints)
    assert raw.dropped == [f for f, bodies in enumerate(frames) if not bodies]
    valid = {f: v for v, f in enumerate(f for f, bodies in enumerate(frames) if bodies)}
    for k, (f, (body_id, xyz, col)) in enumerate(instances):
        assert raw.body_ids[raw.inst_body[k]] == body_id
        assert raw.inst_frame[k] == valid[f]
        np.testing.assert_array_equal(raw.joints[k], xyz)
        np.testing.assert_array_equal(raw.colors[k], col)


@pytest.fixture(params=[True, False], ids=["compiled", "numpy"])
def native(request) -> bool:
    """Run a test through the compiled reader (skipped where it is not built) and the NumPy one."""
    if request.param and ntu._ntuparse is None:
        pytest.skip("the compiled reader mmcl.data._ntuparse is not built (no C compiler at install)")
    return request.param


@pytest.fixture(scope="module")
def real_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "ntu-skeletons").glob("*.skeleton"))


def test_real_files_match_a_plain_reader(real_files, native):
    assert len(real_files) == 12
    crlf = 0
    for path in real_files:
        data = path.read_bytes()
        crlf += b"\r\n" in data
        raw = ntu.parse_skeleton(data, path.name, native=native)
        assert_same_as_plain(raw, data.decode())
        assert raw.declared_frames == int(data.split()[0])
    assert 0 < crlf < len(real_files)  # both line endings are covered


def test_line_endings_do_not_matter(real_files, native):
    for path in real_files[:4]:
        data = path.read_bytes()
        lf = data.replace(b"\r\n", b"\n")
        crlf = lf.replace(b"\n", b"\r\n")
        a, b = ntu.parse_skeleton(lf, path.name, native=native), ntu.parse_skeleton(crlf, path.name, native=native)
        np.testing.assert_array_equal(a.joints, b.joints)
        np.testing.assert_array_equal(a.colors, b.colors)


def test_unusual_but_valid_numbers_and_spacing(real_files, native):
    """Exponents, tabs, doubled and trailing spaces, + signs: the exact per-line path agrees."""
    text = real_files[0].read_bytes().decode().replace("\r\n", "\n")
    lines = text.split("\n")
    rng = np.random.default_rng(0)
    joint_lines = [i for i, line in enumerate(lines) if len(line.split()) == 12]
    for i in rng.choice(joint_lines, 200, replace=False):
        fields = lines[i].split()
        x = float(fields[0])
        style = i % 5
        if style == 0:
            fields[0] = f"{x:.6E}"
        elif style == 1:
            fields[1] = fields[1] if fields[1].startswith("-") else "+" + fields[1]
        elif style == 2:
            lines[i] = "\t".join(fields) + "  "
            continue
        elif style == 3:
            lines[i] = "  ".join(fields)
            continue
        else:
            fields[5] = fields[5] + "000000000"  # a 16+ character token
        lines[i] = " ".join(fields)
    edited = "\n".join(lines)
    assert_same_as_plain(ntu.parse_skeleton(edited.encode(), "edited", native=native), edited)


def test_vectorised_numbers_match_python_float():
    rng = np.random.default_rng(1)
    values = rng.normal(size=4000) * 10.0 ** rng.integers(-3, 5, 4000)
    tokens = [f"{v:.{int(p)}g}" for v, p in zip(values, rng.integers(1, 10, 4000))]
    tokens += ["0", "-0", "5.", ".5", "-.5", "123456789012345", "-0.0000001", "7", "-7"]
    tokens += ["--1", "1.2.3", "-", ".", "abc", "1-2", "12-", "1a", "1e5", "+1", "1234567890123456"]
    data = " ".join(tokens).encode()
    buf = np.frombuffer(b"\0" * ntu._W + data, np.uint8)  # every token has 16 bytes before it
    spans = [(m.end() + ntu._W, m.end() - m.start()) for m in re.finditer(rb"\S+", data)]
    values, ok = ntu._parse_numbers(buf, np.array([e for e, _ in spans]), np.array([n for _, n in spans]))
    accepted = 0
    for token, value, good in zip(tokens, values, ok):
        try:
            expected = float(token)
        except ValueError:
            assert not good, token
            continue
        if good:
            accepted += 1
            assert value == expected and np.signbit(value) == np.signbit(expected), token
    plain = [t for t in tokens if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", t) and len(t) <= 14]
    assert accepted == len(plain) > 3000  # all but exponents, + signs, 15+ characters: fast path
    assert not ok[tokens.index("1e5")] and not ok[tokens.index("+1")]


def test_the_compiled_reader_is_built_where_a_compiler_is():
    if shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc") is None:
        pytest.skip("no C compiler here: the NumPy reader runs (same results, slower)")
    assert ntu._ntuparse is not None, "pip install -e . should have built mmcl/data/_ntuparse.c"


def test_compiled_numbers_are_python_floats_cast_to_float32():
    """Random decimals with and without exponents, in the x column of one-body files."""
    if ntu._ntuparse is None:
        pytest.skip("the compiled reader is not built")
    rng = np.random.default_rng(2)
    tokens = []
    for _ in range(25 * 400):
        digits = str(int(rng.integers(0, 10 ** int(rng.integers(1, 16)))))
        if rng.random() < 0.7 and len(digits) > 1:
            k = int(rng.integers(1, len(digits)))
            digits = digits[:k] + "." + digits[k:]
        if rng.random() < 0.3:
            digits += str(rng.choice(["e", "E"])) + str(rng.choice(["", "-", "+"])) + str(int(rng.integers(0, 12)))
        tokens.append(("-" if rng.random() < 0.5 else "") + digits)
    tokens[:12] = ["0", "-0", "5.", ".5", "-.5", "123456789012345", "-7.257856E-05", "1e22", "1e-22", "9e0", "-0.0", "3E+2"]
    compiled = fallbacks = 0
    for lo in range(0, len(tokens), 25):
        chunk = tokens[lo : lo + 25]
        rows = "\n".join(f"{t} 0.5 {t} 2 3 {t} {t} 0 0 0 0 2" for t in chunk)
        data = f"1\n1\n72057594037931101 0 1 1 1 1 0 0 0 2\n25\n{rows}\n".encode()
        parsed = ntu._ntuparse.parse(data)
        if parsed is None:  # exponents beyond 10**+-22, 16+ digits: the NumPy reader's job
            fallbacks += 1
            continue
        compiled += 1
        expected = np.array([float(t) for t in chunk], np.float32)
        joints = np.frombuffer(parsed[5], np.float32).reshape(25, 3)
        colors = np.frombuffer(parsed[6], np.float32).reshape(25, 2)
        for column in (joints[:, 0], joints[:, 2], colors[:, 0], colors[:, 1]):
            np.testing.assert_array_equal(column.view(np.uint32), expected.view(np.uint32))
        assert (joints[:, 1] == 0.5).all()
    assert compiled > 200 and fallbacks > 0
    good = "1\n1\n7 0 1 1 1 1 0 0 0 2\n25\n" + "1.5 0 0 0 0 0 0 0 0 0 0 2\n" * 25
    assert ntu._ntuparse.parse(good.encode()) is not None
    for odd in ["+1", "1e", "1e+", "--1", "1.2.3", "0x10", "nan", "inf", "1_0", "1e999"]:
        data = "1\n1\n7 0 1 1 1 1 0 0 0 2\n25\n" + f"{odd} 0 0 0 0 0 0 0 0 0 0 2\n" * 25
        assert ntu._ntuparse.parse(data.encode()) is None, odd


def test_compiled_reader_accepts_only_what_the_numpy_reader_accepts(real_files):
    """Random cuts, byte changes and line swaps of a real file: the compiled reader either gives
    the NumPy reader's arrays or hands the file back (None); never a different answer."""
    if ntu._ntuparse is None:
        pytest.skip("the compiled reader is not built")
    lines, end = real_files[0].read_bytes().split(b"\n"), 1
    for _ in range(12):  # the first 12 frames, declared as such
        end += 1 + int(lines[end]) * (2 + ntu.NUM_JOINTS)
    original = b"\n".join([b"12"] + lines[1:end]) + b"\n"
    ntu.parse_skeleton(original, "cut", native=False)  # well-formed
    rng = np.random.default_rng(3)
    outcomes = {"same": 0, "handed back": 0}
    for trial in range(300):
        data = bytearray(original)
        kind = trial % 3
        if kind == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(0, len(data)))] = int(rng.choice(list(b"0123456789 .-\n\r\teE+x")))
        else:
            lines = bytes(data).split(b"\n")
            i, j = rng.integers(0, len(lines), 2)
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        data = bytes(data)
        compiled = ntu._ntuparse.parse(data)
        try:
            expected = ntu.parse_skeleton(data, "mutated", native=False)
        except SampleError:
            assert compiled is None, f"trial {trial}: the compiled reader accepted a file the NumPy reader rejects"
            outcomes["handed back"] += 1
            continue
        if compiled is None:
            outcomes["handed back"] += 1
            continue
        got = ntu.parse_skeleton(data, "mutated")
        assert got.dropped == expected.dropped and got.body_ids == expected.body_ids
        for field in ("inst_body", "inst_frame", "joints", "colors"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
        outcomes["same"] += 1
    assert min(outcomes.values()) > 30, outcomes


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode().replace("\r\n", "\n").split("\n")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda ls: ls[:500], r"line 500: file ends early, inside the joints of body 1 in frame 18"),
        (lambda ls: ["1"] + ls[1:28] + [ls[28][:20]], r"line 29: expected the 12 values"),  # cut mid-line
        (lambda ls: ["1"] + ls[1:], r"line 30: unexpected content after the 1 frames"),
        (lambda ls: [ls[0], "2"] + ls[2:], r"line 30: expected the 10 fields of body 2"),
        (lambda ls: ls[:2] + [ls[2], "24"] + ls[4:], r"line 4: body 1 in frame 1 has 24 joints"),
        (lambda ls: ls[:4] + [ls[4].replace(ls[4].split()[1], "0.2x", 1)] + ls[5:], r"line 5: value 2 is not a number: '0.2x'"),
        (lambda ls: ["many"] + ls[1:], r"line 1: expected the frame count"),
        (lambda ls: ls[:6] + [ls[6].replace(ls[6].split()[0], "1e999", 1)] + ls[7:], r"line 7: a coordinate is not a finite"),
        (lambda ls: ls[:29] + ["-1"] + ls[30:], r"line 30: the body count of frame 2 is negative"),
    ],
)
def test_malformed_files_name_the_line(real_files, edit, expected, native):
    lines = edit(_lines(real_files[0]))
    with pytest.raises(SampleError, match=expected) as info:
        ntu.parse_skeleton("\n".join(lines).encode(), "S001C001P001R001A001.skeleton", native=native)
    assert str(info.value).startswith("S001C001P001R001A001.skeleton: ")


def test_empty_files_are_sample_errors():
    with pytest.raises(SampleError, match="holds 0 bodies in all 3 frames"):
        ntu.prepare_skeleton(b"3\r\n0\r\n0\r\n0\r\n", "empty.skeleton")
    with pytest.raises(SampleError, match="declares 0 frames"):
        ntu.prepare_skeleton(b"0\n", "zero.skeleton")
    with pytest.raises(SampleError, match="line 1"):
        ntu.prepare_skeleton(b"", "nothing.skeleton")


def _body_lines(body_id: int, xyz: np.ndarray) -> list[str]:
    out = [f"{body_id} 0 1 1 1 1 0 0.01 0.02 2", "25"]
    for x, y, z in xyz:
        out.append(f"{x:.6f} {y:.6f} {z:.6f} 250.1 200.2 {960 + 400 * x:.3f} {540 - 400 * y:.3f} 0.1 0.2 0.3 0.4 2")
    return out


def _file(frames: list[list[tuple[int, np.ndarray]]]) -> bytes:
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines += _body_lines(body_id, xyz)
    return ("\r\n".join(lines) + "\r\n").encode()


def _pose(rng: np.random.Generator, x0: float = 0.0) -> np.ndarray:
    pose = rng.normal(scale=0.05, size=(25, 3))
    pose[:, 1] += np.linspace(-0.8, 0.8, 25)  # tall, not wide: passes the spread filter
    pose[:, 0] += x0
    pose[:, 2] += 3.0
    return pose


def test_all_bodies_failing_the_length_filter_is_a_sample_error():
    rng = np.random.default_rng(2)
    frames = [[(1, _pose(rng)), (2, _pose(rng, 1.0))] for _ in range(8)]
    with pytest.raises(SampleError, match="all 2 bodies are seen in 11 frames or fewer"):
        ntu.prepare_skeleton(_file(frames), "short.skeleton")
    # a single bodyID is never denoised: 8 frames of one body are kept (CTR-GCN)
    single = ntu.prepare_skeleton(_file([[(1, _pose(rng))] for _ in range(8)]), "one.skeleton")
    assert single.joints.shape == (8, 2, 25, 3) and single.actors == 1


def test_body_listed_twice_in_a_frame_is_a_sample_error():
    rng = np.random.default_rng(3)
    frames = [[(1, _pose(rng))] for _ in range(5)] + [[(1, _pose(rng)), (1, _pose(rng))]]
    with pytest.raises(SampleError, match="listed twice in one frame"):
        ntu.prepare_skeleton(_file(frames), "twice.skeleton")


def test_colours_follow_the_joints_through_slots_and_deletions():
    """A late second actor and an empty frame: colours land in the same rows and slots."""
    rng = np.random.default_rng(4)
    a = [_pose(rng) * [1 + 0.1 * t, 1, 1] for t in range(20)]  # large motion: actor 1
    b = [_pose(rng, 1.0) for _ in range(14)]
    frames = [[(7, a[t])] + ([(9, b[t - 6])] if t >= 6 else []) for t in range(20)]
    frames.insert(3, [])  # a 0-body frame, deleted
    prepared = ntu.prepare_skeleton(_file(frames), "S001C001P001R001A050.skeleton")
    assert prepared.joints.shape == (20, 2, 25, 3)
    assert prepared.frame_index.tolist() == [0, 1, 2] + list(range(4, 21))
    for t in range(20):
        for slot, source, first in ((0, a, 0), (1, b, 6)):
            if t < first:
                assert not prepared.joints[t, slot].any() and not prepared.colors[t, slot].any()
                continue
            xyz = np.float32(np.round(source[t - first], 6))
            expected = np.stack([960 + 400 * xyz[:, 0], 540 - 400 * xyz[:, 1]], axis=1)
            np.testing.assert_allclose(prepared.colors[t, slot], expected, atol=1e-3)


def test_class_names_and_missing_lists_ship_with_mmcl():
    names = ntu.ntu_class_names()
    assert len(names) == 120
    assert names[0] == "drink water" and names[59] == "walking apart from each other"
    assert names[119] == "finger-guessing game (playing rock-paper-scissors)"
    assert len(ntu.Ntu60Source().class_names) == 60 and len(ntu.Ntu120Source().class_names) == 120
    assert len(ntu.missing_skeletons(ntu.Ntu60Source.missing_list)) == 302
    assert len(ntu.missing_skeletons(ntu.Ntu120Source.missing_list)) == 535
    src = ntu.Ntu60Source()
    assert src.skip_reason("S001C002P005R002A008") == "on the official missing-skeleton list"
    assert "not part of ntu60" in src.skip_reason("S018C001P008R001A061")
    assert ntu.Ntu120Source().skip_reason("S018C001P008R001A061") is None
