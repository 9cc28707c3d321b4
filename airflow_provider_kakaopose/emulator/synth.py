"""Synthetic pose results: plausible human figures in the Pose API's COCO layout.

Pure Python (no numpy, no Airflow). Everything is deterministic from a ``random.Random`` seeded by the caller.
Image results come from :func:`image_persons`; video results from :func:`video_result_bytes`, which builds the
whole JSON body of a successful job as bytes, frame by frame, without ever holding the frames as Python objects
(a 108,000-frame, 3-person result is about 190 MB of JSON). Frames come in independently seeded blocks, so a
big result can be built by several worker processes (``python -m airflow_provider_kakaopose.emulator.synth``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

from airflow_provider_kakaopose.coco import KEYPOINT_NAMES, SKELETON

CATEGORIES = [
    {
        "id": 1,
        "keypoints": list(KEYPOINT_NAMES),
        "name": "person",
        "skeleton": [list(pair) for pair in SKELETON],
        "supercategory": "person",
    }
]

INFO = {
    "contributor": "Kakao Brain Corp.",
    "date_created": "2020/05/26",
    "description": "Human pose estimation result from Kakao Brain",
    "url": "https://www.kakaobrain.com",
    "version": "191227",
    "year": 2020,
}

# Indices into the 17 keypoints.
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI, L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, R_ANK = (
    range(17)
)

# Body proportions in units of the figure's height H (top of head = 0, ankles ~ 0.97).
_SHOULDER_Y = 0.19
_HIP_Y = 0.53
_UPPER_ARM = 0.17
_FOREARM = 0.15
_THIGH = 0.22
_SHIN = 0.23


def stable_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded by a stable hash of ``parts`` (bytes are hashed as they are, others by str)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        data = part if isinstance(part, bytes | bytearray | memoryview) else str(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return random.Random(int.from_bytes(h.digest(), "little"))


def _figure(
    cx: float,
    top: float,
    height: float,
    facing: float,
    width_factor: float,
    arm_angles: tuple[float, float, float, float],
    leg_angles: tuple[float, float, float, float],
) -> list[tuple[float, float]]:
    """17 (x, y) points of a figure.

    ``facing`` shifts the face toward +x (1) or -x (-1) or not at all (0, a frontal view); ``width_factor``
    narrows shoulders and hips (1 = frontal, ~0.4 = side view). Limb angles are in radians from straight down,
    positive toward +x: (left upper arm, left forearm, right upper arm, right forearm) and likewise for legs.
    """
    H = height
    head_x = cx + facing * 0.025 * H
    head_y = top + 0.07 * H
    sw = 0.12 * H * width_factor
    hw = 0.085 * H * width_factor
    sho_y = top + _SHOULDER_Y * H
    hip_y = top + _HIP_Y * H
    pts: list[tuple[float, float]] = [(0.0, 0.0)] * 17
    pts[NOSE] = (head_x + facing * 0.02 * H, head_y)
    ew = 0.025 * H * (1.0 - 0.5 * abs(facing))
    pts[L_EYE] = (head_x + ew + facing * 0.012 * H, head_y - 0.02 * H)
    pts[R_EYE] = (head_x - ew + facing * 0.012 * H, head_y - 0.02 * H)
    aw = 0.055 * H * (1.0 - 0.6 * abs(facing))
    pts[L_EAR] = (head_x + aw - facing * 0.015 * H, head_y - 0.005 * H)
    pts[R_EAR] = (head_x - aw - facing * 0.015 * H, head_y - 0.005 * H)
    pts[L_SHO] = (cx + sw, sho_y)
    pts[R_SHO] = (cx - sw, sho_y)
    pts[L_HIP] = (cx + hw, hip_y)
    pts[R_HIP] = (cx - hw, hip_y)
    lu, lf, ru, rf = arm_angles
    x, y = pts[L_SHO]
    x, y = x + math.sin(lu) * _UPPER_ARM * H, y + math.cos(lu) * _UPPER_ARM * H
    pts[L_ELB] = (x, y)
    pts[L_WRI] = (x + math.sin(lf) * _FOREARM * H, y + math.cos(lf) * _FOREARM * H)
    x, y = pts[R_SHO]
    x, y = x + math.sin(ru) * _UPPER_ARM * H, y + math.cos(ru) * _UPPER_ARM * H
    pts[R_ELB] = (x, y)
    pts[R_WRI] = (x + math.sin(rf) * _FOREARM * H, y + math.cos(rf) * _FOREARM * H)
    lt, ls, rt, rs = leg_angles
    x, y = pts[L_HIP]
    x, y = x + math.sin(lt) * _THIGH * H, y + math.cos(lt) * _THIGH * H
    pts[L_KNE] = (x, y)
    pts[L_ANK] = (x + math.sin(ls) * _SHIN * H, y + math.cos(ls) * _SHIN * H)
    x, y = pts[R_HIP]
    x, y = x + math.sin(rt) * _THIGH * H, y + math.cos(rt) * _THIGH * H
    pts[R_KNE] = (x, y)
    pts[R_ANK] = (x + math.sin(rs) * _SHIN * H, y + math.cos(rs) * _SHIN * H)
    return pts


def _person(xs: list[float], ys: list[float], scores: list[float], digits: int = 4) -> dict | None:
    """A Person object from per-keypoint values (score 0 = undetected); ``None`` if nothing was detected."""
    kps: list[float] = []
    dx: list[float] = []
    dy: list[float] = []
    dsum = 0.0
    for x, y, s in zip(xs, ys, scores, strict=True):
        if s <= 0.0:
            kps += (0.0, 0.0, 0.0)
            continue
        x = round(x, digits)
        y = round(y, digits)
        s = round(s, 4)
        kps += (x, y, s)
        dx.append(x)
        dy.append(y)
        dsum += s
    if not dx:
        return None
    x0, y0 = min(dx), min(dy)
    w = round(max(dx) - x0, 4)
    h = round(max(dy) - y0, 4)
    return {
        "area": round(w * h, 4),
        "bbox": [x0, y0, w, h],
        "category_id": 1,
        "keypoints": kps,
        "score": round(dsum / 17.0 * 0.97 + 0.02, 4),
    }


def _score(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.06:
        return 0.03 + rng.random() * 0.25  # detected, but barely (like the sample's 0.0631 ear)
    return 0.55 + rng.random() * 0.45


def image_persons(rng: random.Random, width: int, height: int) -> list[dict]:
    """0..4 persons (usually 1-3, sometimes 0) standing in an image of ``width`` x ``height`` pixels."""
    n = rng.choices((0, 1, 2, 3, 4), weights=(8, 45, 30, 13, 4))[0]
    persons = []
    slot_w = width / max(n, 1)
    for i in range(n):
        H = height * rng.uniform(0.4, 0.92)
        H = min(H, slot_w / 0.45)
        cx = slot_w * (i + 0.5) + rng.uniform(-0.15, 0.15) * slot_w
        top = rng.uniform(0.02 * height, max(0.02 * height, height - 0.99 * H))
        facing = rng.choice((0.0, 0.0, 0.0, 0.6, -0.6, 1.0, -1.0))
        width_factor = 1.0 - 0.55 * abs(facing)
        lu = rng.uniform(-0.3, 2.6)  # left arm: from slightly inward to raised overhead
        ru = -rng.uniform(-0.3, 2.6)
        arms = (lu, lu + rng.uniform(-1.2, 1.2), ru, ru + rng.uniform(-1.2, 1.2))
        lt = rng.uniform(-0.15, 0.45)
        rt = -rng.uniform(-0.15, 0.45)
        legs = (lt, lt + rng.uniform(-0.5, 0.3), rt, rt + rng.uniform(-0.3, 0.5))
        pts = _figure(cx, top, H, facing, width_factor, arms, legs)
        xs, ys, scores = [], [], []
        for x, y in pts:
            jx = x + rng.gauss(0.0, 0.006 * H)
            jy = y + rng.gauss(0.0, 0.006 * H)
            s = _score(rng)
            if rng.random() < 0.08 or not (0.0 <= jx <= width - 1 and 0.0 <= jy <= height - 1):
                # Undetected (or outside the picture: the service never reports points off the image).
                s = 0.0
            xs.append(jx)
            ys.append(jy)
            scores.append(s)
        person = _person(xs, ys, scores)
        if person is not None:
            persons.append(person)
    return persons


# ----------------------------------------------------------------------------------------------------------
# Video


@dataclass(frozen=True)
class VideoSpec:
    """What the emulator pretends the video is."""

    frames: int = 90
    persons: int = 1
    fps: float = 30.0
    width: int = 1280
    height: int = 720
    smoothing: bool = True


class _Walker:
    """One person walking back and forth across the frame, limbs swinging; a precomputed gait cycle."""

    def __init__(self, rng: random.Random, spec: VideoSpec, index: int):
        w, h, n = spec.width, spec.height, max(spec.persons, 1)
        lane = (index + 0.5) / n
        self.H = H = h * rng.uniform(0.45, 0.8) * (1.0 - 0.25 * lane * (n > 1))
        self.top = min(max(0.02 * h, h * 0.98 - H - rng.uniform(0.0, 0.1) * h * lane), h - H)
        self.margin = 0.25 * H
        self.span = max(w - 2 * self.margin, 1.0)
        fps = spec.fps if spec.fps > 0 else 30.0
        self.speed = H * rng.uniform(0.6, 1.0) / fps  # pixels per frame
        self.offset = rng.uniform(0.0, 2 * self.span)
        period = max(round(fps * rng.uniform(0.9, 1.2)), 4)  # frames per gait cycle
        self.phase0 = rng.randrange(period)
        self.period = period
        self.jitter = (0.0015 if spec.smoothing else 0.006) * H
        # Gait tables relative to (cx, top): one for walking toward +x, mirrored for -x.
        self.cycle: dict[int, list[list[tuple[float, float]]]] = {}
        for d in (1, -1):
            table = []
            for k in range(period):
                ph = 2 * math.pi * k / period
                s = math.sin(ph)
                arm = 0.45 * s
                leg = 0.4 * s
                knee = 0.55 * max(0.0, math.sin(ph + 1.2))
                knee2 = 0.55 * max(0.0, math.sin(ph + 1.2 + math.pi))
                arms = (d * arm, d * (arm + 0.35), -d * arm, d * (-arm + 0.35))
                legs = (-d * leg, -d * (leg + knee), d * leg, d * (leg - knee2))
                bob = 0.012 * H * abs(math.cos(ph))
                pts = _figure(0.0, self.top + bob, H, 0.8 * d, 0.45, arms, legs)
                table.append(pts)
            self.cycle[d] = table
        # Keypoints that are often hidden in a side view: the far ear and eye.
        self.hidden_bias = {1: (R_EAR, R_EYE), -1: (L_EAR, L_EYE)}

    def position(self, f: int) -> tuple[float, int]:
        """(centre x, direction) at frame ``f``: a triangle wave between the margins."""
        p = (self.offset + f * self.speed) % (2 * self.span)
        if p < self.span:
            return self.margin + p, 1
        return self.margin + 2 * self.span - p, -1


_ZERO_KP = "0.0, 0.0, 0.0"
#: "0.0" .. "1.0" for every score in 1e-4 steps: formatting a score is then a table look-up.
_SCORE_STR = [repr(i / 10000) for i in range(10001)]


def _q(v: float) -> int:
    """``v`` (non-negative) in units of 1e-4, rounded half up."""
    return int(v * 10000.0 + 0.5)


def _frame_objects_json(walkers: list[_Walker], f: int, rnd, wmax: float, hmax: float) -> str:
    """The JSON list of Person objects of frame ``f``, built as a string (no dicts, no json encoder)."""
    objs = []
    for wk in walkers:
        cx, d = wk.position(f)
        pts = wk.cycle[d][(f + wk.phase0) % wk.period]
        hidden = wk.hidden_bias[d]
        j = wk.jitter
        parts = []
        minx = miny = 1 << 62
        maxx = maxy = -1
        ssum = 0
        for i, (px, py) in enumerate(pts):
            r = rnd()
            if r < 0.04 or (r < 0.45 and i in hidden):
                parts.append(_ZERO_KP)
                continue
            x = cx + px + (rnd() - 0.5) * j
            y = py + (rnd() - 0.5) * j
            if not (0.0 <= x <= wmax and 0.0 <= y <= hmax):
                parts.append(_ZERO_KP)
                continue
            xi = int(x * 10000.0 + 0.5)
            yi = int(y * 10000.0 + 0.5)
            si = 500 + int(rnd() * 2500) if r > 0.97 else 6000 + int(rnd() * 4000)
            parts.append(f"{xi / 10000!r}, {yi / 10000!r}, {_SCORE_STR[si]}")
            if xi < minx:
                minx = xi
            if xi > maxx:
                maxx = xi
            if yi < miny:
                miny = yi
            if yi > maxy:
                maxy = yi
            ssum += si
        if maxx < 0:
            continue
        w = (maxx - minx) / 10000
        h = (maxy - miny) / 10000
        objs.append(
            f'{{"area": {_q(w * h) / 10000!r}, "bbox": [{minx / 10000!r}, {miny / 10000!r}, {w!r}, {h!r}], '
            f'"category_id": 1, "keypoints": [{", ".join(parts)}], '
            f'"score": {_SCORE_STR[int(ssum / 17 * 0.97 + 200.5)]}}}'
        )
    return "[" + ", ".join(objs) + "]"


#: Frames per independently seeded block: blocks can be generated in parallel (see ``video_result_bytes``).
BLOCK_FRAMES = 4000


def _block_json(args: tuple[str, VideoSpec, int]) -> bytes:
    """Frames ``[block * BLOCK_FRAMES, ...)`` of a job as JSON annotation objects joined by ", " (UTF-8)."""
    key, spec, block = args
    walkers = [_Walker(stable_rng(key, "walker", i), spec, i) for i in range(spec.persons)]
    rnd = stable_rng(key, "block", block).random
    wmax, hmax = spec.width - 1, spec.height - 1
    parts = []
    for f in range(block * BLOCK_FRAMES, min(spec.frames, (block + 1) * BLOCK_FRAMES)):
        if spec.persons and rnd() < 1 / 150:
            parts.append(f'{{"frame_num": {f}, "objects": []}}')  # nobody detected (occlusion, motion blur)
        else:
            parts.append(f'{{"frame_num": {f}, "objects": {_frame_objects_json(walkers, f, rnd, wmax, hmax)}}}')
    return ", ".join(parts).encode()


def block_count(spec: VideoSpec) -> int:
    return (spec.frames + BLOCK_FRAMES - 1) // BLOCK_FRAMES


def video_result_bytes(job_id: str, spec: VideoSpec, key: str, annotations: bytes | None = None) -> bytes:
    """The complete JSON body of a successful job, in the shape of the service's sample, as UTF-8 bytes.

    Deterministic from ``key`` (a string: the emulator derives it from its seed and the video's URL or bytes).
    ``annotations``: the text inside the annotations array if already built (by worker processes).
    """
    dumps = json.dumps
    if annotations is None:
        annotations = blocks_bytes(key, spec, 0, block_count(spec))
    fps: float | int = int(spec.fps) if float(spec.fps).is_integer() else spec.fps
    video = {"fps": fps, "frames": spec.frames, "height": spec.height, "width": spec.width}
    tail = (
        f'], "categories": {dumps(CATEGORIES)}, "info": {dumps(INFO)}, '
        f'"job_id": {dumps(job_id)}, "status": "success", "video": {dumps(video)}}}'
    )
    return b"".join((b'{"annotations": [', annotations, tail.encode()))


def blocks_bytes(key: str, spec: VideoSpec, first: int, stop: int) -> bytes:
    """Blocks ``first``..``stop - 1`` joined by ", " (a slice of the annotations array's text)."""
    return b", ".join(_block_json((key, spec, b)) for b in range(first, stop))


def _worker_main() -> None:
    """``python -m airflow_provider_kakaopose.emulator.synth``: a JSON request on stdin, the bytes on stdout.

    The emulator runs several of these for a big job: plain subprocesses, so nothing depends on how the
    emulator's own process was started (unlike multiprocessing's spawn, which re-imports ``__main__``).
    """
    import dataclasses
    import sys

    req = json.loads(sys.stdin.buffer.read())
    spec = VideoSpec(**{f.name: req["spec"][f.name] for f in dataclasses.fields(VideoSpec)})
    sys.stdout.buffer.write(blocks_bytes(req["key"], spec, req["first"], req["stop"]))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _worker_main()
