"""Procedural human motion for the synthetic dataset: a 25-joint NTU body, a handful of joint
angles per frame, forward kinematics, and one pose-over-time function per action.

Everything here is deterministic given the numbers it is called with; randomness (body size,
amplitude, speed, cycles) is drawn by the caller, :mod:`mmcl.data.synthetic`.

Coordinates are in an actor-local frame: x to the actor's left, y up, z the way the actor faces,
metres, feet on the floor y = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Pose parameters, one column each of a (T, P) pose array. Angles in radians.
#   pitch/twist/lean: upper-body bend forward, twist about the spine, sideways lean
#   {l,r}_elev: upper arm raised from hanging (0) through horizontal (pi/2) to overhead (pi);
#              negative swings it backwards
#   {l,r}_az:   direction it is raised towards: 0 forward, pi/2 sideways outward
#   {l,r}_elbow: elbow flexion; {l,r}_bend: plane of flexion, 0 forward .. pi/2 up
#   {l,r}_hip/_abd/_knee: hip flexion (thigh forward), abduction, knee flexion
#   fwd/side/lift: root displacement along the facing direction, to the left, and upward
#                  (lift is added after the feet are put on the floor)
PARAMS = (
    "pitch", "twist", "lean",
    "l_elev", "l_az", "l_elbow", "l_bend", "r_elev", "r_az", "r_elbow", "r_bend",
    "l_hip", "l_abd", "l_knee", "r_hip", "r_abd", "r_knee",
    "fwd", "side", "lift",
)
P = {name: i for i, name in enumerate(PARAMS)}

NEUTRAL = np.zeros(len(PARAMS))
for _k, _v in {
    "l_elev": 0.12, "r_elev": 0.12, "l_az": 1.2, "r_az": 1.2, "l_elbow": 0.25, "r_elbow": 0.25,
    "l_abd": 0.06, "r_abd": 0.06, "l_knee": 0.03, "r_knee": 0.03,
}.items():
    NEUTRAL[P[_k]] = _v


@dataclass(frozen=True)
class Body:
    """Segment lengths of one performer, metres."""

    pelvis: float = 0.25  # spine_base -> spine_mid
    chest: float = 0.24  # spine_mid -> spine_shoulder
    neck: float = 0.07
    head: float = 0.14
    shoulder: float = 0.18  # half width, spine_shoulder -> shoulder
    upper_arm: float = 0.28
    forearm: float = 0.25
    hand: float = 0.07
    hip: float = 0.09  # half width, spine_base -> hip
    thigh: float = 0.43
    shin: float = 0.41
    foot: float = 0.13

    @classmethod
    def random(cls, rng: np.random.Generator, scale: float | None = None) -> "Body":
        """A body of overall ``scale`` (drawn in 0.85..1.12 when None) with per-segment jitter."""
        s = rng.uniform(0.85, 1.12) if scale is None else scale
        base = cls()
        return cls(**{k: v * s * (1 + rng.normal(0, 0.04)) for k, v in base.__dict__.items()})


# -- forward kinematics -----------------------------------------------------------------


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate (T, 3) vectors, or one (3,) vector, by (T, 3, 3) matrices."""
    return np.einsum("tij,tj->ti", rot, np.broadcast_to(v, (rot.shape[0], 3)))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _arm(pose: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Upper-arm and forearm directions in the torso frame, (T, 3) each."""
    sgn = 1.0 if side == "l" else -1.0
    e, az = pose[:, P[f"{side}_elev"]], pose[:, P[f"{side}_az"]]
    elbow, bend = pose[:, P[f"{side}_elbow"]], pose[:, P[f"{side}_bend"]]
    upper = np.stack([sgn * np.sin(e) * np.sin(az), -np.cos(e), np.sin(e) * np.cos(az)], -1)
    b = np.stack([np.zeros_like(bend), np.sin(bend), np.cos(bend)], -1)
    perp = b - np.sum(b * upper, -1, keepdims=True) * upper
    weak = np.linalg.norm(perp, axis=-1) < 0.1  # bend plane undefined: flex upwards
    if weak.any():
        up = np.array([0.0, 1.0, 0.0])
        alt = up - np.sum(up * upper[weak], -1, keepdims=True) * upper[weak]
        perp[weak] = alt
    perp = _unit(perp)
    fore = np.cos(elbow)[:, None] * upper + np.sin(elbow)[:, None] * perp
    return upper, fore


def _leg(pose: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Thigh and shin directions in the pelvis frame, (T, 3) each."""
    sgn = 1.0 if side == "l" else -1.0
    f, a, k = pose[:, P[f"{side}_hip"]], pose[:, P[f"{side}_abd"]], pose[:, P[f"{side}_knee"]]
    thigh = np.stack([sgn * np.sin(a), -np.cos(a) * np.cos(f), np.cos(a) * np.sin(f)], -1)
    shin = np.stack([sgn * np.sin(a), -np.cos(a) * np.cos(f - k), np.cos(a) * np.sin(f - k)], -1)
    return _unit(thigh), _unit(shin)


def forward_kinematics(pose: np.ndarray, body: Body) -> np.ndarray:
    """(T, P) pose parameters -> (T, 25, 3) NTU joints in the actor frame, feet on y = 0."""
    t = pose.shape[0]
    j = np.zeros((t, 25, 3))
    # _rot_x turns +y towards +z: a positive pitch bends forward.
    rt = _rot_x(pose[:, P["pitch"]]) @ _rot_z(pose[:, P["lean"]]) @ _rot_y(pose[:, P["twist"]])
    up = np.array([0.0, 1.0, 0.0])
    j[:, 1] = _apply(rt, up * body.pelvis)  # spine_mid
    j[:, 20] = _apply(rt, up * (body.pelvis + body.chest))  # spine_shoulder
    j[:, 2] = j[:, 20] + _apply(rt, up * body.neck)  # neck
    j[:, 3] = j[:, 2] + _apply(rt, up * body.head)  # head
    for side, (sh, el, wr, ha, tip, th) in (("l", (4, 5, 6, 7, 21, 22)), ("r", (8, 9, 10, 11, 23, 24))):
        sgn = 1.0 if side == "l" else -1.0
        j[:, sh] = j[:, 20] + _apply(rt, np.array([sgn * body.shoulder, -0.03, 0.0]))
        upper, fore = _arm(pose, side)
        upper, fore = _apply(rt, upper), _apply(rt, fore)
        j[:, el] = j[:, sh] + body.upper_arm * upper
        j[:, wr] = j[:, el] + body.forearm * fore
        j[:, ha] = j[:, wr] + body.hand * fore
        j[:, tip] = j[:, ha] + 0.7 * body.hand * fore
        inward = _apply(rt, np.array([-sgn, 0.0, 0.3]))
        j[:, th] = j[:, wr] + 0.6 * body.hand * _unit(fore + 0.8 * inward)
    for side, (hp, kn, an, ft) in (("l", (12, 13, 14, 15)), ("r", (16, 17, 18, 19))):
        sgn = 1.0 if side == "l" else -1.0
        j[:, hp] = np.array([sgn * body.hip, -0.06, 0.0])
        thigh, shin = _leg(pose, side)
        j[:, kn] = j[:, hp] + body.thigh * thigh
        j[:, an] = j[:, kn] + body.shin * shin
        j[:, ft] = j[:, an] + np.array([0.0, -0.04, body.foot])
    # Feet on the floor, then the root displacement.
    j[:, :, 1] -= j[:, [14, 15, 18, 19], 1].min(1, keepdims=True) - 0.03
    j[:, :, 0] += pose[:, None, P["side"]]
    j[:, :, 1] += pose[:, None, P["lift"]]
    j[:, :, 2] += pose[:, None, P["fwd"]]
    return j


# -- timing helpers -------------------------------------------------------------------------


def ease(x: np.ndarray) -> np.ndarray:
    """Smoothstep on [0, 1] (clamped)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def envelope(w: np.ndarray, edge: float = 0.2) -> np.ndarray:
    """0 at both ends of the action window, 1 in between, smooth ramps of width ``edge``."""
    return ease(w / edge) * ease((1 - w) / edge)


def bump(x: np.ndarray) -> np.ndarray:
    """sin^2(pi x) on [0, 1], 0 outside: one smooth rise and fall."""
    return np.where((x >= 0) & (x <= 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)


def _set(pose: np.ndarray, key: str, target, weight) -> None:
    """Blend column ``key`` towards ``target`` by ``weight`` (arrays or scalars)."""
    c = P[key]
    pose[:, c] = (1 - weight) * pose[:, c] + weight * target


@dataclass(frozen=True)
class Style:
    """Per-sample variation of an action: amplitude, repetitions, a side for two-actor roles."""

    amp: float = 1.0
    cycles: int = 2
    phase: float = 0.0
    travel: float = 1.0  # metres each actor walks (walk_towards)


# An action maps the window time w in [0, 1] (T,) and a style to the pose of each actor.
ActionFn = Callable[[np.ndarray, Style], list[np.ndarray]]


def _neutral(w: np.ndarray) -> np.ndarray:
    return np.tile(NEUTRAL, (len(w), 1))


def wave(side: str) -> ActionFn:
    def fn(w: np.ndarray, s: Style) -> list[np.ndarray]:
        p, e = _neutral(w), envelope(w)
        _set(p, f"{side}_elev", 1.75 * s.amp, e)
        _set(p, f"{side}_az", 1.3, e)
        _set(p, f"{side}_bend", np.pi / 2, e)
        _set(p, f"{side}_elbow", 1.3 + 0.5 * s.amp * np.sin(2 * np.pi * s.cycles * w + s.phase), e)
        return [p]

    return fn


def clap(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p, e = _neutral(w), envelope(w, 0.15)
    for side in "lr":
        _set(p, f"{side}_elev", 1.25 * s.amp, e)
        _set(p, f"{side}_az", 0.12 + 0.43 * np.cos(2 * np.pi * s.cycles * w), e)
        _set(p, f"{side}_elbow", 0.5, e)
        _set(p, f"{side}_bend", np.pi / 2, e)
    return [p]


def cheer(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p, e = _neutral(w), envelope(w, 0.3)
    for side in "lr":
        _set(p, f"{side}_elev", min(2.95, 2.7 * s.amp) + 0.15 * np.sin(2 * np.pi * s.cycles * w), e)
        _set(p, f"{side}_az", 1.1, e)
        _set(p, f"{side}_elbow", 0.15, e)
    return [p]


def punch(w: np.ndarray, s: Style) -> list[np.ndarray]:
    """Boxing stance (left foot forward, fists up by the face), then straight right punches
    thrown with a twist of the torso."""
    p, e = _neutral(w), envelope(w, 0.15)
    hit = bump(np.mod(s.cycles * w, 1.0)) * e
    _set(p, "l_hip", 0.35, e)
    _set(p, "r_hip", -0.2, e)
    _set(p, "l_knee", 0.25, e)
    _set(p, "r_knee", 0.15, e)
    for side in "lr":
        _set(p, f"{side}_elev", 0.75, e)
        _set(p, f"{side}_az", 0.3, e)
        _set(p, f"{side}_elbow", 2.3, e)
        _set(p, f"{side}_bend", np.pi / 2, e)
    _set(p, "r_elev", 1.6, hit)
    _set(p, "r_elbow", 0.05, hit)
    _set(p, "r_az", -0.1, hit)
    _set(p, "twist", 0.5 * s.amp, hit)
    _set(p, "pitch", 0.15, e)
    return [p]


def kick(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p = _neutral(w)
    q = np.mod(s.cycles * w, 1.0)
    up = bump(q) * (w < 1)
    _set(p, "r_hip", 1.35 * s.amp, up)
    knee = np.where(q < 0.5, 1.4 * np.sin(2 * np.pi * q) ** 2, 0.6 * np.sin(2 * np.pi * q) ** 2)
    p[:, P["r_knee"]] += knee * (w < 1)
    for side in "lr":
        _set(p, f"{side}_elev", 0.6, up)
        _set(p, f"{side}_az", 1.4, up)
    _set(p, "pitch", -0.2, up)
    return [p]


def squat(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p = _neutral(w)
    d = np.sin(np.pi * s.cycles * w) ** 2
    for side in "lr":
        _set(p, f"{side}_hip", 1.7 * s.amp, d)
        _set(p, f"{side}_knee", min(2.3, 2.1 * s.amp), d)
        _set(p, f"{side}_elev", 1.45, d)
        _set(p, f"{side}_az", 0.3, d)
        _set(p, f"{side}_elbow", 0.1, d)
    _set(p, "pitch", 0.45, d)
    return [p]


def jump(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p = _neutral(w)
    q = np.mod(s.cycles * w, 1.0) * (w < 1)
    crouch = bump(q / 0.3) + bump((q - 0.7) / 0.3)
    air = np.where((q > 0.3) & (q < 0.7), np.sin(np.pi * (q - 0.3) / 0.4), 0.0)
    for side in "lr":
        _set(p, f"{side}_hip", 0.8, crouch)
        _set(p, f"{side}_knee", 1.3, crouch)
        _set(p, f"{side}_elev", 2.4, air)
        _set(p, f"{side}_az", 0.4, air)
    _set(p, "pitch", 0.3, crouch)
    p[:, P["lift"]] = 0.28 * s.amp * air
    return [p]


def bow(w: np.ndarray, s: Style) -> list[np.ndarray]:
    p = _neutral(w)
    d = ease(w / 0.35) * ease((1 - w) / 0.35)
    pitch = 1.0 * s.amp * d
    p[:, P["pitch"]] = pitch
    for side in "lr":
        _set(p, f"{side}_az", 0.1, d)
        p[:, P[f"{side}_elev"]] = np.maximum(p[:, P[f"{side}_elev"]], 0.9 * pitch)
        _set(p, f"{side}_knee", 0.12, d)
    p[:, P["fwd"]] = -0.12 * d
    return [p]


def sit(standing_up: bool) -> ActionFn:
    def fn(w: np.ndarray, s: Style) -> list[np.ndarray]:
        p = _neutral(w)
        d = ease(1 - w) if standing_up else ease(w)
        for side in "lr":
            _set(p, f"{side}_hip", 1.5, d)
            _set(p, f"{side}_knee", 1.55, d)
            _set(p, f"{side}_elev", 0.5, d)
            _set(p, f"{side}_az", 0.2, d)
            _set(p, f"{side}_elbow", 0.7, d)
        p[:, P["pitch"]] = 0.55 * s.amp * bump(w) + 0.1 * d
        p[:, P["fwd"]] = -0.25 * d
        return [p]

    return fn


def handshake(w: np.ndarray, s: Style) -> list[np.ndarray]:
    out = []
    for _ in range(2):
        p, e = _neutral(w), envelope(w, 0.25)
        _set(p, "r_elev", 0.95 + 0.12 * s.amp * np.sin(2 * np.pi * s.cycles * w), e)
        _set(p, "r_az", -0.2, e)
        _set(p, "r_elbow", 0.55, e)
        p[:, P["fwd"]] = 0.1 * e
        out.append(p)
    return out


def push(w: np.ndarray, s: Style) -> list[np.ndarray]:
    """Actor 1 lunges and shoves with both hands; actor 2 staggers backwards, arms flung out."""
    a, b = _neutral(w), _neutral(w)
    ready = ease(w / 0.35) * ease((1 - w) / 0.2)
    thrust = ease((w - 0.4) / 0.12) * ease((1 - w) / 0.25)
    for side in "lr":
        _set(a, f"{side}_elev", 1.2, ready)
        _set(a, f"{side}_az", 0.15, ready)
        _set(a, f"{side}_elbow", 1.6, ready)
        _set(a, f"{side}_elev", 1.45, thrust)
        _set(a, f"{side}_elbow", 0.1, thrust)
    a[:, P["fwd"]] = 0.3 * ease((w - 0.4) / 0.15)
    a[:, P["pitch"]] = 0.3 * thrust
    a[:, P["l_hip"]] = 0.45 * thrust  # lunge
    a[:, P["l_knee"]] += 0.4 * thrust
    hit = ease((w - 0.48) / 0.25)
    travel = 0.7 * s.amp
    b[:, P["fwd"]] = -travel * hit
    recoil = bump((w - 0.48) / 0.4)
    b[:, P["pitch"]] = -0.35 * recoil
    step = np.sin(2 * np.pi * travel * hit / 0.5) * recoil  # stumbling steps backwards
    b[:, P["l_hip"]] = -0.35 * step
    b[:, P["r_hip"]] = 0.35 * step
    b[:, P["l_knee"]] += 0.4 * np.maximum(0, step)
    b[:, P["r_knee"]] += 0.4 * np.maximum(0, -step)
    for side in "lr":
        _set(b, f"{side}_elev", 1.5, recoil)
        _set(b, f"{side}_az", 1.4, recoil)
        _set(b, f"{side}_elbow", 0.3, recoil)
    return [a, b]


def hug(w: np.ndarray, s: Style) -> list[np.ndarray]:
    """Both step in, wrap their arms round each other and rock gently from side to side."""
    out = []
    for k in range(2):
        p, e = _neutral(w), envelope(w, 0.3)
        for side in "lr":
            _set(p, f"{side}_elev", 1.3, e)
            _set(p, f"{side}_az", 0.95, e)
            _set(p, f"{side}_elbow", 1.7 * s.amp, e)
        p[:, P["pitch"]] = 0.15 * e
        p[:, P["fwd"]] = 0.12 * e
        p[:, P["twist"]] = 0.2 * e * np.sin(2 * np.pi * s.cycles * w + np.pi * k)
        out.append(p)
    return out


def walk_towards(w: np.ndarray, s: Style) -> list[np.ndarray]:
    """Both actors walk ``s.travel`` metres forwards (the caller places them far enough apart)."""
    out = []
    for k in range(2):
        p = _neutral(w)
        travel = s.travel * w
        phase = 2 * np.pi * travel / (0.75 * s.amp) + np.pi * k + s.phase
        gait = np.clip(np.minimum(w, 1 - w) / 0.05, 0, 1)
        p[:, P["fwd"]] = travel
        p[:, P["l_hip"]] = 0.38 * np.sin(phase) * gait
        p[:, P["r_hip"]] = -0.38 * np.sin(phase) * gait
        p[:, P["l_knee"]] += 0.6 * np.maximum(0, np.sin(phase - 1.2)) * gait
        p[:, P["r_knee"]] += 0.6 * np.maximum(0, -np.sin(phase - 1.2)) * gait
        for side, sgn in (("l", -1), ("r", 1)):
            _set(p, f"{side}_az", 0.15, gait)
            p[:, P[f"{side}_elev"]] = (1 - gait) * p[:, P[f"{side}_elev"]] + gait * sgn * 0.35 * np.sin(phase)
        out.append(p)
    return out
