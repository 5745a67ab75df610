"""NTU RGB+D 60/120: the Kinect v2 ``.skeleton`` reader and CTR-GCN's preprocessing.

One raw file becomes one :class:`~mmcl.data.store.Sample` in three steps, each a function here:

1. :func:`parse_skeleton` reads the text into body instances (CR/LF-tolerant; vectorised
   with NumPy, since parsing is what bounds ``mmcl prepare``'s speed).
2. :func:`select_actors` reproduces CTR-GCN's ``get_raw_skes_data.py`` and
   ``get_raw_denoised_data.py``: empty frames deleted, bodies keyed by bodyID with gaps closed
   up, the length / spread denoising and motion ordering (only with 2+ bodyIDs), the two actor
   slots, and (2+ bodyIDs only) removal of frames whose joints sum to exactly 0.
3. :func:`centre` reproduces ``seq_transformation.py``'s ``seq_translation``: subtract joint 2
   (spine-mid) of actor 1 at its first non-zero frame; for two-actor arrays, re-zero an actor's
   frames that were all zero before.

The defaults keep CTR-GCN's quirks, because the published results were obtained with them.
Two can be fixed with options that are off by default:

- ``fix_slot2_span``: CTR-GCN starts slot 2's span at [0, 0] and only ever grows it with
  ``min``/``max``, so its start stays 0 and a body that ends before a later slot-2 body is
  wrongly seen as overlapping it and dropped. With the fix, slot 2's span starts empty and
  becomes the first slot-2 body's interval.
- ``fix_empty_frame_origin``: with a single bodyID, frames whose joints are all zero are not
  removed and centring turns them into ``-origin``. With the fix they stay zero.

Where CTR-GCN would crash, mmcl rejects the one sample with a :class:`SampleError` and goes on:
a file whose frames all hold 0 bodies, a sample whose bodies all fail the length filter, a
sample whose actor 1 is all zeros (no origin), a body listed more often than there are frames
left, and any malformed or truncated file (reported with the line number).

Colour coordinates (colorX, colorY) go through exactly the same frame deletions, slots and
gap closing as the joints. They are not centred, and they are 0 where an actor is absent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from mmcl.data.naming import parse_ntu_name
from mmcl.data.sources import SampleError
from mmcl.data.splits import all_splits
from mmcl.data.store import Sample
from mmcl.errors import MMCLError
from mmcl.graphs import NTU, Layout

try:  # the compiled reader (setup.py builds it; without a C compiler the NumPy reader runs)
    from mmcl.data import _ntuparse
except ImportError:  # pragma: no cover - depends on the build
    _ntuparse = None

NUM_JOINTS = 25
JOINT_FIELDS = 12  # x y z depthX depthY colorX colorY orientationW X Y Z trackingState
BODY_FIELDS = 10  # bodyID clippedEdges handLeft(Confidence,State) handRight(..) isRestricted leanX leanY trackingState

# CTR-GCN's denoising thresholds (get_raw_denoised_data.py).
NOISE_LENGTH = 11  # bodies seen in this many frames or fewer are dropped
NOISE_SPREAD = 0.8  # a frame is noisy when x-range > 0.8 * y-range
NOISE_SPREAD_RATIO = 0.69754  # a body with this share of noisy frames (or more) is dropped


# ----------------------------------------------------------------------------------------------
# 1. Parsing
# ----------------------------------------------------------------------------------------------
@dataclass
class RawSkeleton:
    """The body instances of one ``.skeleton`` file, in file order (0-body frames removed)."""

    source: str  # file name, for messages
    declared_frames: int  # the frame count on line 1
    dropped: list[int]  # 0-based file frames that held 0 bodies
    body_ids: list[str]  # distinct bodyIDs, in order of first appearance
    inst_body: np.ndarray  # int (n,): index into body_ids of each instance
    inst_frame: np.ndarray  # int (n,): valid-frame index (after dropping 0-body frames)
    joints: np.ndarray  # float32 (n, 25, 3): x, y, z in metres
    colors: np.ndarray  # float32 (n, 25, 2): colorX, colorY in colour-image pixels

    @property
    def num_frames(self) -> int:
        """Frames that hold at least one body."""
        return self.declared_frames - len(self.dropped)


# The vectorised number parser reads each token right-aligned in the 16 bytes that end where it
# ends, as two little-endian uint64 words, and turns digits into an integer with SWAR
# arithmetic (eight digits per multiply-shift). Exponents, tokens of 15+ characters and anything
# unusual take the exact per-line path instead.
_W = 16
_MAX_TOKEN = 14  # so that 10 * mantissa < 10**15 < 2**53 stays exact in float64
_U64 = np.uint64
_ONES = _U64(0x0101010101010101)
_POSITIONS = _U64(0x0807060504030201)  # (1 << 8*b) * this >> 56 == 8 - b
_LOW_BYTES = _U64(0x000000FF000000FF)
_K1 = _U64(100 + (1000000 << 32))
_K2 = _U64(1 + (10000 << 32))
_POW10_INT = np.array([10**k for k in range(_W + 1)], dtype=_U64)
_POW10 = 10.0 ** np.arange(_W + 1)


def _token_masks() -> np.ndarray:
    """Per token length L: (inside word 0, inside word 1, not-first word 0, not-first word 1):
    the bytes of the last L of 16 columns, and those bytes except the first (for the minus)."""
    table = np.zeros((_W + 1, 4), _U64)
    for length in range(_W + 1):
        inside = np.zeros(_W, np.uint8)
        inside[_W - length :] = 0xFF
        later = inside.copy()
        if length:
            later[_W - length] = 0
        table[length, :2] = inside.view(_U64)
        table[length, 2:] = (later & 1).view(_U64)
    return table


_TOKEN_MASKS = _token_masks()
_INSIDE = np.ascontiguousarray(_TOKEN_MASKS[:, :2]).view(f"V{_W}").ravel()  # 16-byte rows: one
_LATER = np.ascontiguousarray(_TOKEN_MASKS[:, 2:]).view(f"V{_W}").ravel()  # gather per token
_NEEDED = (0, 1, 2, 5, 6)  # x y z colorX colorY


def parse_skeleton(data: bytes, source: str = "<bytes>", *, native: bool = True) -> RawSkeleton:
    """Parse the text of a Kinect v2 ``.skeleton`` file.

    Raises :class:`SampleError` naming ``source``, the 1-based line number and the reason for a
    truncated or malformed file, or for counts that do not match the lines that follow.

    Well-formed files go through the compiled reader ``mmcl.data._ntuparse`` when it is built
    (``native=False`` skips it); it gives the same arrays, and it hands anything unusual (and
    every malformed file) back to the NumPy reader below.
    """
    fast = _ntuparse.parse(data) if native and _ntuparse is not None else None
    if fast is not None:
        declared, dropped, ids, bodies, frames, joints, colors = fast
        inst_body = np.frombuffer(bodies, np.int64)
        joints = np.frombuffer(joints, np.float32).reshape(len(inst_body), NUM_JOINTS, 3)
        colors = np.frombuffer(colors, np.float32).reshape(len(inst_body), NUM_JOINTS, 2)
        frames = np.frombuffer(frames, np.int64)
    else:
        declared, dropped, ids, inst_body, frames, joints, colors = _parse_skeleton_numpy(data, source)
    return RawSkeleton(
        source=source,
        declared_frames=declared,
        dropped=dropped,
        body_ids=[b.decode("ascii", "replace") for b in ids],
        inst_body=inst_body,
        inst_frame=frames,
        joints=joints,
        colors=colors,
    )


def _parse_skeleton_numpy(data: bytes, source: str):
    """:func:`parse_skeleton`'s parts in Python and NumPy, for any file, with the line-numbered
    errors: as the compiled reader's, but arrays (declared, dropped, distinct bodyIDs, instance
    bodies, instance frames, joints (n, 25, 3), colors (n, 25, 2))."""
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.empty(len(newlines) + 1, np.int64)
    starts[0] = 0
    starts[1:] = newlines + 1
    ends = np.empty_like(starts)
    ends[:-1] = newlines
    ends[-1] = len(buf)
    sl, el = starts.tolist(), ends.tolist()
    walk = _walk_fast(data, sl, el) or _walk(data, sl, el, source)
    joint_first, ids, frames, dropped, declared = walk

    body_index: dict[bytes, int] = {}
    inst_body = np.fromiter((body_index.setdefault(i, len(body_index)) for i in ids), np.int64, len(ids))
    lines = (np.asarray(joint_first, np.int64)[:, None] + np.arange(NUM_JOINTS)).ravel()
    values = _parse_joint_lines(data, buf, starts[lines], ends[lines], lines, source)
    values = values.reshape(len(joint_first), NUM_JOINTS, len(_NEEDED))
    joints, colors = np.ascontiguousarray(values[:, :, :3]), np.ascontiguousarray(values[:, :, 3:])
    return declared, dropped, list(body_index), inst_body, np.asarray(frames, np.int64), joints, colors


def _walk_fast(data: bytes, sl: list[int], el: list[int]):
    """:func:`_walk` for well-formed files, without its bookkeeping; None for anything else
    (then :func:`_walk` runs and says what is wrong)."""
    nlines = len(sl)
    joint_first: list[int] = []
    ids: list[bytes] = []
    frames: list[int] = []
    dropped: list[int] = []
    try:
        declared = int(data[sl[0] : el[0]])
        li, valid = 1, 0
        for f in range(declared):
            nbodies = int(data[sl[li] : el[li]])
            li += 1
            if nbodies <= 0:
                if nbodies < 0:
                    return None
                dropped.append(f)
                continue
            for _ in range(nbodies):
                fields = data[sl[li] : el[li]].split()
                if len(fields) != BODY_FIELDS or int(data[sl[li + 1] : el[li + 1]]) != NUM_JOINTS:
                    return None
                ids.append(fields[0])
                joint_first.append(li + 2)
                frames.append(valid)
                li += 2 + NUM_JOINTS
            valid += 1
    except (ValueError, IndexError):
        return None
    if li > nlines or not joint_first or any(data[sl[i] : el[i]].strip() for i in range(li, nlines)):
        return None
    return joint_first, ids, frames, dropped, declared


def _walk(data: bytes, sl: list[int], el: list[int], source: str):
    """Follow the counts through the file: frames, bodies, joint blocks. Returns the first joint
    line of each body instance, its bodyID and valid-frame index, the dropped frames and the
    declared frame count."""
    nlines = len(sl)

    def count(i: int, what: str) -> int:
        if i >= nlines:
            raise SampleError(f"{source}: line {i + 1}: file ends early; expected {what}")
        text = data[sl[i] : el[i]]
        try:
            value = int(text)
        except ValueError:
            raise SampleError(
                f"{source}: line {i + 1}: expected {what} (an integer), found {_show(text)}"
            ) from None
        if value < 0:
            raise SampleError(f"{source}: line {i + 1}: {what} is negative ({value})")
        return value

    declared = count(0, "the frame count")
    joint_first: list[int] = []
    ids: list[bytes] = []
    frames: list[int] = []
    dropped: list[int] = []
    li, valid = 1, 0
    for f in range(declared):
        nbodies = count(li, f"the body count of frame {f + 1}")
        li += 1
        if nbodies == 0:
            dropped.append(f)
            continue
        for b in range(nbodies):
            if li >= nlines:
                raise SampleError(
                    f"{source}: line {li + 1}: file ends early; expected body {b + 1} of "
                    f"{nbodies} in frame {f + 1}"
                )
            fields = data[sl[li] : el[li]].split()
            if len(fields) != BODY_FIELDS:
                raise SampleError(
                    f"{source}: line {li + 1}: expected the {BODY_FIELDS} fields of body {b + 1} "
                    f"of {nbodies} in frame {f + 1} (bodyID ... trackingState), found "
                    f"{len(fields)}: {_show(data[sl[li] : el[li]])}"
                )
            njoints = count(li + 1, f"the joint count of body {b + 1} in frame {f + 1}")
            if njoints != NUM_JOINTS:
                raise SampleError(
                    f"{source}: line {li + 2}: body {b + 1} in frame {f + 1} has {njoints} joints; "
                    f"Kinect v2 files have {NUM_JOINTS}"
                )
            if li + 2 + NUM_JOINTS > nlines:
                raise SampleError(
                    f"{source}: line {nlines}: file ends early, inside the joints of body "
                    f"{b + 1} in frame {f + 1} (declared {declared} frames)"
                )
            ids.append(fields[0])
            joint_first.append(li + 2)
            frames.append(valid)
            li += 2 + NUM_JOINTS
        valid += 1
    for i in range(li, nlines):
        if data[sl[i] : el[i]].strip():
            raise SampleError(
                f"{source}: line {i + 1}: unexpected content after the {declared} frames that "
                f"line 1 announces: {_show(data[sl[i] : el[i]])}"
            )
    if not joint_first:
        what = "declares 0 frames" if declared == 0 else f"holds 0 bodies in all {declared} frames"
        raise SampleError(f"{source}: the file {what}; there is no skeleton to keep")
    return joint_first, ids, frames, dropped, declared


def _parse_joint_lines(
    data: bytes, buf: np.ndarray, ls: np.ndarray, le: np.ndarray, lines: np.ndarray, source: str
) -> np.ndarray:
    """x y z colorX colorY of each joint line, float32 (n, 5).

    Lines of 12 fields separated by single spaces go through the vectorised parser, in blocks
    small enough for the CPU cache; any line or number it does not accept (exponents, long
    tokens, other whitespace, garbage) is parsed exactly with Python, which also produces the
    error message when the line is malformed.
    """
    n = len(ls)
    values = np.empty((n, len(_NEEDED)))
    good = np.empty(n, bool)
    for lo in range(0, n, _LINES_PER_BLOCK):
        hi = min(lo + _LINES_PER_BLOCK, n)
        values[lo:hi], good[lo:hi] = _parse_line_block(buf, ls[lo:hi], le[lo:hi])
    for i in np.flatnonzero(~good).tolist():
        values[i] = _parse_joint_line(data[ls[i] : le[i]], int(lines[i]), source)
    with np.errstate(over="ignore"):  # too large for float32: reported just below
        values = values.astype(np.float32)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise SampleError(
            f"{source}: line {int(lines[i]) + 1}: a coordinate is not a finite float32 number: "
            f"{_show(data[ls[i] : le[i]])}"
        )
    return values


_LINES_PER_BLOCK = 1024
_GAPS = JOINT_FIELDS - 1
_FIELD_ENDS = np.array(_NEEDED)[:, None]
_FIELD_STARTS = np.array([f - 1 for f in _NEEDED[1:]])[:, None]


def _parse_line_block(buf: np.ndarray, ls: np.ndarray, le: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, 5), good (n,)) for joint lines starting at ``ls`` and ending at ``le``."""
    n = len(ls)
    start = int(ls[0])
    spaces = np.flatnonzero(buf[start : int(le[-1]) + 1] == 32)
    if len(spaces) < _GAPS:
        return np.zeros((n, len(_NEEDED))), np.zeros(n, bool)
    spaces += start
    k0 = np.searchsorted(spaces, ls)
    k = np.minimum(k0, len(spaces) - _GAPS)
    last = spaces[k + _GAPS - 1]
    after = spaces[np.minimum(k + _GAPS, len(spaces) - 1)]
    # exactly 11 spaces in the line, none leading, and a non-empty last field
    good = (k == k0) & (last < le) & ((k + _GAPS >= len(spaces)) | (after > le))
    good &= (spaces[k] > ls) & (buf[np.minimum(last + 1, len(buf) - 1)] > 32)
    doubled = np.flatnonzero(np.diff(spaces) == 1)
    if len(doubled):  # rare: mark lines holding two spaces in a row
        good[np.searchsorted(ls, spaces[doubled], side="right") - 1] = False
    ends = spaces[k + _FIELD_ENDS]  # (5, n)
    begins = np.empty_like(ends)
    begins[0] = ls
    begins[1:] = spaces[k + _FIELD_STARTS] + 1
    values, ok = _parse_numbers(buf, ends.ravel(), (ends - begins).ravel())
    good &= ok.reshape(len(_NEEDED), n).all(axis=0)
    return values.reshape(len(_NEEDED), n).T, good


def _parse_numbers(buf: np.ndarray, end: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse the tokens ``[-]digits[.digits]`` that end at ``end`` (exclusive) in ``buf``.

    Returns float64 values and an ``ok`` mask (values where it is False are meaningless). With
    the dot read as a 0 digit, the digits form an integer C = L * 10**(f+1) + R (f digits R after
    the dot), so C + 9 R = 10 * mantissa, exact in uint64 and float64; one division by an exact
    power of ten then gives the correctly rounded double that ``float(token)`` gives. It is cast
    to float32 later, as CTR-GCN's ``np.array(fields, dtype=np.float32)`` does.
    """
    n = len(end)
    windows = np.ndarray((max(len(buf) - _W + 1, 1),), dtype=f"V{_W}", buffer=buf, strides=(1,))
    chars = windows[np.maximum(end - _W, 0)].view(np.uint8).reshape(n, _W)  # the token at the right
    digit = chars - np.uint8(48)
    isdigit = digit < 10
    digit *= isdigit
    # per byte: 1 for a digit, 16 for a dot, 64 for a minus
    code = isdigit.view(np.uint8) | ((chars == 46).view(np.uint8) << 4) | ((chars == 45).view(np.uint8) << 6)
    index = np.clip(length, 0, _W)
    inside = _INSIDE[index].view(_U64).reshape(n, 2)
    digits = digit.view(_U64) & inside  # (n, 2) words
    codes = code.view(_U64) & inside
    sums = (codes * _ONES) >> _U64(56)
    counts = sums[:, 0] + sums[:, 1]
    ndigits, ndots, nminus = counts & _U64(15), (counts >> _U64(4)) & _U64(3), counts >> _U64(6)
    stray = ((codes >> _U64(6)) & _ONES) & _LATER[index].view(_U64).reshape(n, 2)  # a minus after the start
    ok = (length >= 1) & (length <= _MAX_TOKEN) & (end >= _W) & (ndots <= 1) & (ndigits >= 1)
    ok &= (ndigits + ndots + nminus == length) & ((stray[:, 0] | stray[:, 1]) == 0)
    parsed = _parse8(digits)
    combined = parsed[:, 0] * _U64(10**8) + parsed[:, 1]
    top = (((codes >> _U64(4)) & _ONES) * _POSITIONS) >> _U64(56)  # the dot: 8 - its byte
    exponent = (top[:, 1] + top[:, 0] + _U64(8) * (top[:, 0] > 0)).astype(np.intp)  # f + 1, or 0
    np.minimum(exponent, _W, out=exponent)  # (only wrong tokens, which are not ok, exceed it)
    fraction = combined % _POW10_INT[np.maximum(exponent - (ndots == 1), 0)]
    values = (combined + _U64(9) * fraction).astype(np.float64) / _POW10[exponent]
    np.negative(values, out=values, where=nminus == 1)
    return values, ok


def _parse8(words: np.ndarray) -> np.ndarray:
    """Eight digit bytes (values 0-9, most significant first in memory) -> their integer."""
    words = words * _U64(10) + (words >> _U64(8))
    return ((words & _LOW_BYTES) * _K1 + ((words >> _U64(16)) & _LOW_BYTES) * _K2) >> _U64(32)


def _parse_joint_line(line: bytes, index: int, source: str) -> list[float]:
    fields = line.split()
    if len(fields) != JOINT_FIELDS:
        raise SampleError(
            f"{source}: line {index + 1}: expected the {JOINT_FIELDS} values of a joint "
            f"(x y z depthX depthY colorX colorY orientationWXYZ trackingState), found "
            f"{len(fields)}: {_show(line)}"
        )
    out = []
    for k in _NEEDED:
        try:
            out.append(float(fields[k]))
        except ValueError:
            raise SampleError(
                f"{source}: line {index + 1}: value {k + 1} is not a number: {_show(fields[k])}"
            ) from None
    return out


def _show(text: bytes) -> str:
    text = text.strip()
    shown = text[:60].decode("ascii", "replace")
    return repr(shown + ("..." if len(text) > 60 else "")) if text else "an empty line"


# ----------------------------------------------------------------------------------------------
# 2. Bodies, denoising and the two actor slots (get_raw_skes_data.py + get_raw_denoised_data.py)
# ----------------------------------------------------------------------------------------------
@dataclass
class Body:
    """One bodyID: its instances stacked in file order, as if in consecutive frames."""

    id: str
    start: int  # valid-frame index of its first appearance
    joints: np.ndarray  # float32 (n, 25, 3)
    colors: np.ndarray  # float32 (n, 25, 2)
    motion: np.float32 | None = None

    @property
    def length(self) -> int:
        return len(self.joints)

    @property
    def end(self) -> int:
        """Last frame of its interval: gaps are closed up, so start + length - 1."""
        return self.start + self.length - 1


def bodies_of(raw: RawSkeleton) -> list[Body]:
    """The bodies of a file in order of first appearance; with 2+ bodyIDs each gets its motion:
    the sum over x, y, z of the variance of all its joint coordinates, in float32."""
    bodies = []
    for b, body_id in enumerate(raw.body_ids):
        inst = np.flatnonzero(raw.inst_body == b)
        bodies.append(Body(body_id, int(raw.inst_frame[inst[0]]), raw.joints[inst], raw.colors[inst]))
    if len(bodies) > 1:
        for body in bodies:
            body.motion = _motion(body.joints)
    for body in bodies:
        if body.end >= raw.num_frames:
            raise SampleError(
                f"{raw.source}: body {body.id} appears {body.length} times from frame "
                f"{body.start + 1}, more than the {raw.num_frames - body.start} frames left "
                "(listed twice in one frame?)"
            )
    return bodies


def _motion(joints: np.ndarray) -> np.float32:
    # same array layout and reduction as CTR-GCN: var over the (n*25, 3) stack, then sum
    return np.sum(np.var(joints.reshape(-1, 3), axis=0))


def denoise(bodies: list[Body], source: str = "<sample>") -> list[Body]:
    """CTR-GCN's denoising for samples with 2+ bodyIDs: length filter, spread filter (with the
    motion update), then a stable sort by motion, largest first."""
    kept = [b for b in bodies if b.length > NOISE_LENGTH]
    if not kept:
        raise SampleError(
            f"{source}: all {len(bodies)} bodies are seen in {NOISE_LENGTH} frames or fewer "
            "and fail CTR-GCN's length filter; no actor is left"
        )
    if len(kept) == 1:
        return kept
    remaining = list(kept)
    for body in kept:
        if len(remaining) == 1:
            break
        x, y = body.joints[:, :, 0], body.joints[:, :, 1]
        clean = (x.max(axis=1) - x.min(axis=1)) <= NOISE_SPREAD * (y.max(axis=1) - y.min(axis=1))
        noisy = body.length - int(clean.sum())
        if noisy == 0:
            continue
        if noisy / float(body.length) >= NOISE_SPREAD_RATIO:
            remaining.remove(body)
        else:
            body.motion = min(body.motion, _motion(body.joints[clean]))
    if len(remaining) == 1:
        return remaining
    return sorted(remaining, key=lambda b: b.motion, reverse=True)


@dataclass
class Actors:
    """The selected actors before centring, CTR-GCN's ``raw_denoised_joints`` for one sample."""

    joints: np.ndarray  # float32 (T, M, 25, 3); M = 1 or 2, CTR-GCN's 75 or 150 columns
    colors: np.ndarray  # float32 (T, M, 25, 2); 0 where an actor is absent
    frames: np.ndarray  # int (T,): the raw file frame of each row
    body_ids: int  # distinct bodyIDs in the file


def select_actors(raw: RawSkeleton, *, fix_slot2_span: bool = False) -> Actors:
    """Bodies -> actor slots, exactly as CTR-GCN's ``get_raw_denoised_data.py``."""
    bodies = bodies_of(raw)
    t = raw.num_frames
    frames = np.delete(np.arange(raw.declared_frames), raw.dropped)  # valid frame -> file frame
    if len(bodies) == 1:  # one bodyID: no denoising, no zero-row removal
        joints, colors = _one_actor(bodies[0], t)
        return Actors(joints, colors, frames, 1)
    ranked = denoise(bodies, raw.source)
    if len(ranked) == 1:
        joints, colors = _one_actor(ranked[0], t)
    else:
        joints, colors = _two_actors(ranked, t, fix_slot2_span)
    keep = joints.reshape(t, -1).sum(axis=1) != 0
    if not keep.all():
        joints, colors, frames = joints[keep], colors[keep], frames[keep]
    return Actors(joints, colors, frames, len(bodies))


def _one_actor(body: Body, t: int) -> tuple[np.ndarray, np.ndarray]:
    joints = np.zeros((t, 1, NUM_JOINTS, 3), np.float32)
    colors = np.zeros((t, 1, NUM_JOINTS, 2), np.float32)
    joints[body.start : body.end + 1, 0] = body.joints
    colors[body.start : body.end + 1, 0] = body.colors
    return joints, colors


def _two_actors(ranked: list[Body], t: int, fix_slot2_span: bool) -> tuple[np.ndarray, np.ndarray]:
    joints = np.zeros((t, 2, NUM_JOINTS, 3), np.float32)
    colors = np.zeros((t, 2, NUM_JOINTS, 2), np.float32)
    first = ranked[0]
    joints[first.start : first.end + 1, 0] = first.joints
    colors[first.start : first.end + 1, 0] = first.colors
    span1 = [first.start, first.end]
    span2: list[int] | None = None if fix_slot2_span else [0, 0]  # CTR-GCN: a virtual [0, 0]
    for body in ranked[1:]:
        if _apart(span1, body):
            slot, span = 0, span1
        elif span2 is None or _apart(span2, body):
            slot, span = 1, span2
        else:
            continue  # overlaps both slots: dropped
        joints[body.start : body.end + 1, slot] = body.joints
        colors[body.start : body.end + 1, slot] = body.colors
        if span is None:
            span2 = [body.start, body.end]
        else:
            span[0], span[1] = min(body.start, span[0]), max(body.end, span[1])
    return joints, colors


def _apart(span: list[int], body: Body) -> bool:
    """CTR-GCN's "no overlap": min(ends) - max(starts) <= 0 (sharing one frame counts as apart)."""
    return min(span[1], body.end) - max(span[0], body.start) <= 0


# ----------------------------------------------------------------------------------------------
# 3. Centring (seq_transformation.py, seq_translation)
# ----------------------------------------------------------------------------------------------
def centre(joints: np.ndarray, *, fix_empty_frame_origin: bool = False, source: str = "<sample>") -> np.ndarray:
    """Subtract actor 1's spine-mid (joint 2) at its first non-zero frame from every joint.

    ``joints`` is (T, M, 25, 3) with M = 1 or 2 as from :func:`select_actors`. For M = 2, an
    actor's frames whose values summed to 0 before are set back to 0 (CTR-GCN); with
    ``fix_empty_frame_origin`` the same is done for M = 1.
    """
    t, m = joints.shape[:2]
    flat = joints.reshape(t, m * NUM_JOINTS * 3).copy()
    width = NUM_JOINTS * 3
    empty = [flat[:, a * width : (a + 1) * width].sum(axis=1) == 0 for a in range(m)]
    present = np.flatnonzero((flat[:, :width] != 0).any(axis=1))
    if len(present) == 0:
        raise SampleError(f"{source}: actor 1 is all zeros in every frame; there is no origin to centre on")
    origin = flat[present[0], 3:6].copy()
    flat.reshape(t, m * NUM_JOINTS, 3)[:] -= origin
    if m == 2 or fix_empty_frame_origin:
        for a in range(m):
            flat[empty[a], a * width : (a + 1) * width] = 0
    return flat.reshape(joints.shape)


def to_two_slots(array: np.ndarray) -> np.ndarray:
    """(T, 1, V, C) -> (T, 2, V, C) with a zero second actor (CTR-GCN's 150 columns)."""
    if array.shape[1] == 2:
        return array
    out = np.zeros((array.shape[0], 2, *array.shape[2:]), array.dtype)
    out[:, :1] = array
    return out


@dataclass
class PreparedSkeleton:
    """One NTU sample as stored: CTR-GCN's final joints plus the aligned colour coordinates."""

    joints: np.ndarray  # float32 (T, 2, 25, 3), centred
    colors: np.ndarray  # float32 (T, 2, 25, 2), colour-image pixels, 0 where an actor is absent
    frame_index: np.ndarray  # int32 (T,): the raw file (= video) frame of each row
    body_ids: int  # distinct bodyIDs in the raw file

    @property
    def actors(self) -> int:
        """1 or 2: whether the second actor slot holds anyone."""
        return 1 + int(np.any(self.joints[:, 1] != 0))


def prepare_skeleton(
    data: bytes,
    source: str = "<bytes>",
    *,
    fix_slot2_span: bool = False,
    fix_empty_frame_origin: bool = False,
) -> PreparedSkeleton:
    """Raw ``.skeleton`` text -> the prepared sample (parse, select actors, centre)."""
    actors = select_actors(parse_skeleton(data, source), fix_slot2_span=fix_slot2_span)
    joints = centre(actors.joints, fix_empty_frame_origin=fix_empty_frame_origin, source=source)
    return PreparedSkeleton(
        to_two_slots(joints), to_two_slots(actors.colors), actors.frames.astype(np.int32), actors.body_ids
    )


# ----------------------------------------------------------------------------------------------
# The dataset sources
# ----------------------------------------------------------------------------------------------
def _resource_text(name: str) -> str:
    return resources.files("mmcl").joinpath("resources", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def ntu_class_names() -> tuple[str, ...]:
    """The official names of actions A1..A120 (index = label)."""
    names: dict[int, str] = {}
    for line in _resource_text("ntu_action_classes_A1-A120.txt").splitlines():
        match = re.match(r"\*\s*A(\d+)\.\s*(.*?)\.?\s*$", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    if sorted(names) != list(range(1, 121)):
        raise MMCLError("mmcl/resources/ntu_action_classes_A1-A120.txt does not list A1..A120")
    return tuple(names[i] for i in range(1, 121))


@functools.lru_cache(maxsize=None)
def missing_skeletons(list_name: str) -> frozenset[str]:
    """An official missing-skeleton list (2 header lines, then one name per line)."""
    lines = _resource_text(list_name).splitlines()[2:]
    return frozenset(line.strip() for line in lines if line.strip())


@dataclass(frozen=True)
class NtuSource:
    """NTU RGB+D raw ``.skeleton`` files as a :class:`~mmcl.data.sources.DatasetSource`."""

    fix_slot2_span: bool = False
    fix_empty_frame_origin: bool = False

    name: ClassVar[str] = "ntu"
    max_setup: ClassVar[int] = 32
    num_classes: ClassVar[int] = 120
    missing_list: ClassVar[str] = "NTU_RGBD120_samples_with_missing_skeletons.txt"
    layout: ClassVar[Layout] = NTU
    num_person: ClassVar[int] = 2
    channels: ClassVar[int] = 3
    has_colors: ClassVar[bool] = True
    has_frame_index: ClassVar[bool] = True  # rows map to raw (video) frames: frame_index.npy
    meta_fields: ClassVar[tuple[str, ...]] = ("setup", "camera", "subject", "replication", "body_ids")

    @property
    def class_names(self) -> tuple[str, ...]:
        return ntu_class_names()[: self.num_classes]

    def discover(self, raw: Path) -> list[Path]:
        raw = Path(raw)
        if not raw.exists():
            raise MMCLError(
                f"{raw} does not exist; pass --raw the folder of NTU RGB+D .skeleton files "
                "(e.g. nturgb+d_skeletons/)"
            )
        if not raw.is_dir():
            raise MMCLError(f"{raw} is not a folder; pass --raw the folder of .skeleton files")
        files = sorted(raw.rglob("*.skeleton"), key=lambda p: (p.name, str(p)))
        if not files:
            others = sorted(p.name for p in raw.iterdir())
            found = (
                f"it holds {len(others)} other entries, e.g. {', '.join(others[:3])}"
                if others
                else "it is empty"
            )
            raise MMCLError(
                f"{raw} holds no NTU RGB+D .skeleton files ({found}); is this the right folder?"
            )
        for a, b in zip(files, files[1:]):
            if a.name == b.name:
                raise MMCLError(f"sample {a.stem} appears twice: {a} and {b}; keep one of them")
        return files

    def sample_name(self, path: Path) -> str:
        return Path(path).name[: -len(".skeleton")]

    def skip_reason(self, name: str) -> str | None:
        try:
            fields = parse_ntu_name(name)
        except MMCLError:
            return None  # read() rejects it with the reason
        if name in missing_skeletons(self.missing_list):
            return "on the official missing-skeleton list"
        if fields["setup"] > self.max_setup or fields["action"] > self.num_classes:
            return f"not part of {self.name} (setup > {self.max_setup} or action > {self.num_classes})"
        return None

    def read(self, path: Path) -> Sample:
        path = Path(path)
        name = self.sample_name(path)
        try:
            fields = parse_ntu_name(name)
        except MMCLError as exc:
            raise SampleError(f"{path.name}: {exc}") from None
        if fields["action"] > self.num_classes:
            raise SampleError(f"{path.name}: action A{fields['action']:03d} is not one of {self.name}'s {self.num_classes}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SampleError(f"{path.name}: cannot be read: {exc.strerror or exc}") from None
        prepared = prepare_skeleton(
            data,
            path.name,
            fix_slot2_span=self.fix_slot2_span,
            fix_empty_frame_origin=self.fix_empty_frame_origin,
        )
        meta = {k: fields[k] for k in ("setup", "camera", "subject", "replication")}
        meta["body_ids"] = prepared.body_ids
        return Sample(
            name=name,
            label=fields["action"] - 1,
            joints=prepared.joints,
            colors=prepared.colors,
            bodies=prepared.actors,
            meta=meta,
            frame_index=prepared.frame_index,
        )

    def splits(self, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        return all_splits(self.name, names)

    def options(self) -> dict[str, bool]:
        """The settings recorded in dataset.json's source entry."""
        return {"fix_slot2_span": self.fix_slot2_span, "fix_empty_frame_origin": self.fix_empty_frame_origin}


@dataclass(frozen=True)
class Ntu60Source(NtuSource):
    """NTU RGB+D 60: setups 1-17, actions A1-A60, 302 samples on the missing list."""

    name: ClassVar[str] = "ntu60"
    max_setup: ClassVar[int] = 17
    num_classes: ClassVar[int] = 60
    missing_list: ClassVar[str] = "NTU_RGBD_samples_with_missing_skeletons.txt"


@dataclass(frozen=True)
class Ntu120Source(NtuSource):
    """NTU RGB+D 120: setups 1-32, actions A1-A120, 535 samples on the missing list."""

    name: ClassVar[str] = "ntu120"
    max_setup: ClassVar[int] = 32
    num_classes: ClassVar[int] = 120
    missing_list: ClassVar[str] = "NTU_RGBD120_samples_with_missing_skeletons.txt"
