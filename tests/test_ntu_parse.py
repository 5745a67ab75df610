"""The Kinect v2 .skeleton reader: the vectorised parser against a plain line-by-line reader,
line endings, odd number formats, malformed files, and the NTU metadata that ships with mmcl."""

from __future__ import annotations

import re
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


@pytest.fixture(scope="module")
def real_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "ntu-skeletons").glob("*.skeleton"))


def test_real_files_match_a_plain_reader(real_files):
    assert len(real_files) == 12
    crlf = 0
    for path in real_files:
        data = path.read_bytes()
        crlf += b"\r\n" in data
        raw = ntu.parse_skeleton(data, path.name)
        assert_same_as_plain(raw, data.decode())
        assert raw.declared_frames == int(data.split()[0])
    assert 0 < crlf < len(real_files)  # both line endings are covered


def test_line_endings_do_not_matter(real_files):
    for path in real_files[:4]:
        data = path.read_bytes()
        lf = data.replace(b"\r\n", b"\n")
        crlf = lf.replace(b"\n", b"\r\n")
        a, b = ntu.prepare_skeleton(lf, path.name), ntu.prepare_skeleton(crlf, path.name)
        np.testing.assert_array_equal(a.joints, b.joints)
        np.testing.assert_array_equal(a.colors, b.colors)


def test_unusual_but_valid_numbers_and_spacing(real_files):
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
    assert_same_as_plain(ntu.parse_skeleton(edited.encode(), "edited"), edited)


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
def test_malformed_files_name_the_line(real_files, edit, expected):
    lines = edit(_lines(real_files[0]))
    with pytest.raises(SampleError, match=expected) as info:
        ntu.parse_skeleton("\n".join(lines).encode(), "S001C001P001R001A001.skeleton")
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
