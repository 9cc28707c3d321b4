"""Synthetic tracking scenes whose true identities are known, and their score by py-motmetrics.

Shared by tests/test_tracking.py and benchmarks/tracking.py (``from scenes import ...``; tests/ is on
``sys.path`` under pytest, the benchmark puts it there). Independent of airflow_provider_kakaopose: a scene is a
Pose API video answer (the dict ``keypoints_table`` takes) and the true identity of each
``(frame_num, person_idx)``.

People are a standing pose (17 keypoints, a small per-person variation unless they are look-alikes) moved along
paths given in pixels per second and sampled at the scene's fps; keypoints get Gaussian noise, a share is
undetected (sent as 0, 0, 0), the box is the extent of the detected keypoints with a margin, and the persons of
a frame come in random order. A path is NaN where its person is not detected (hidden, out of the picture, or
missed by the detector).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A standing person, keypoint offsets from the centre in units of the person's height (x right, y down).
POSE = np.array(
    [
        [0.0, -0.42],  # nose
        [-0.03, -0.45],
        [0.03, -0.45],
        [-0.06, -0.43],
        [0.06, -0.43],
        [-0.12, -0.3],  # shoulders
        [0.12, -0.3],
        [-0.16, -0.12],  # elbows
        [0.16, -0.12],
        [-0.17, 0.04],  # wrists
        [0.17, 0.04],
        [-0.08, 0.02],  # hips
        [0.08, 0.02],
        [-0.09, 0.25],  # knees
        [0.09, 0.25],
        [-0.09, 0.48],  # ankles
        [0.09, 0.48],
    ]
)
#: The 25, 30 and 60 fps every main scene kind is built at.
FPS = (25, 30, 60)


@dataclass
class Scene:
    """A video answer with the true identity of each ``(frame_num, person_idx)``."""

    name: str
    kind: str
    answer: dict
    truth: dict[tuple[int, int], int]
    #: Keyword arguments for assign_tracks (the defaults when empty).
    params: dict = field(default_factory=dict)
    #: Identities that must get ids of their own (a stranger entering where someone left).
    strangers: tuple[int, ...] = ()

    @property
    def fps(self) -> float:
        return float(self.answer["video"]["fps"])


def video(
    paths: dict[int, np.ndarray],
    heights: dict[int, float],
    *,
    seed: int = 0,
    noise: float = 1.5,
    undetected: float = 0.05,
    job_id: str = "job-1",
    fps: float = 30.0,
    poses: dict[int, np.ndarray] | None = None,
    size: tuple[int, int] = (1280, 720),
) -> tuple[dict, dict[tuple[int, int], int]]:
    """A video job answer from true paths, and the true identity of each (frame_num, person_idx).

    ``paths[identity]`` is an (F, 2) array of centres, NaN where the person is not detected. ``poses``: the pose
    of each identity (default: :data:`POSE` with a small random variation each).
    """
    rng = np.random.default_rng(seed)
    frames = len(next(iter(paths.values())))
    varied = {i: POSE + rng.normal(0, 0.015, POSE.shape) for i in paths}
    poses = {**varied, **(poses or {})}
    annotations, truth = [], {}
    for f in range(frames):
        present = [i for i in paths if not np.isnan(paths[i][f]).any()]
        rng.shuffle(present)
        objects = []
        for p_idx, i in enumerate(present):
            objects.append(_person(paths[i][f] + poses[i] * heights[i], heights[i], rng, noise, undetected))
            truth[(f, p_idx)] = i
        annotations.append({"frame_num": f, "objects": objects})
    answer = {
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
        "info": {"description": "synthetic"},
        "job_id": job_id,
        "status": "success",
        "video": {"fps": float(fps), "frames": frames, "height": size[1], "width": size[0]},
    }
    return answer, truth


def _person(points: np.ndarray, h: float, rng: np.random.Generator, noise: float, undetected: float) -> dict:
    kp = points + rng.normal(0, noise, (17, 2))
    seen = rng.random(17) >= undetected
    seen[5] = True  # at least one keypoint
    lo, hi = kp[seen].min(axis=0) - 0.05 * h, kp[seen].max(axis=0) + 0.05 * h
    flat: list[float] = []
    for k in range(17):
        flat += [round(float(kp[k, 0]), 2), round(float(kp[k, 1]), 2), 0.9] if seen[k] else [0.0, 0.0, 0.0]
    w, bh = hi - lo
    box = [round(float(v), 2) for v in (lo[0], lo[1], w, bh)]
    return {"area": round(float(w * bh), 4), "bbox": box, "category_id": 1, "keypoints": flat, "score": 0.9}


def line(start: tuple[float, float], velocity: tuple[float, float], frames: int) -> np.ndarray:
    """Centres moving at a constant ``velocity`` (px per frame) from ``start``."""
    t = np.arange(frames)[:, None]
    return np.asarray(start, float) + t * np.asarray(velocity, float)


def walk(start: tuple[float, float], speed: tuple[float, float], fps: float, seconds: float) -> np.ndarray:
    """Centres moving at ``speed`` (px per second) from ``start``, sampled at ``fps`` for ``seconds``."""
    return line(start, (speed[0] / fps, speed[1] / fps), round(seconds * fps))


def hide(path: np.ndarray, fps: float, start_s: float, seconds: float) -> np.ndarray:
    """``path`` with its person undetected from ``start_s`` for ``seconds``."""
    out = path.copy()
    out[round(start_s * fps) : round((start_s + seconds) * fps)] = np.nan
    return out


def out_of_picture(path: np.ndarray, width: float = 1280, margin: float = 20) -> np.ndarray:
    """``path`` undetected where its centre is out of the picture (beyond ``margin`` px of the edge)."""
    out = path.copy()
    out[(out[:, 0] < margin) | (out[:, 0] > width - margin)] = np.nan
    return out


# --------------------------------------------------------------------------------------------- scene kinds


def lookalike_crossing(fps: float, angle: float = 180, speed: float = 150, seed: int = 0) -> Scene:
    """Two look-alikes (same height, same pose, same speed in px/s) whose paths cross at ``angle`` degrees
    (180: head-on on one line); the one behind is hidden while they overlap."""
    h, seconds = 220.0, 2 * 380 / speed
    d0 = np.array([1.0, 0.0])
    rad = np.radians(180 - angle)
    d1 = -np.array([np.cos(rad), np.sin(rad)])  # angle between the two headings
    meet = np.array([640.0, 400.0])
    a = walk(tuple(meet - d0 * 380), tuple(d0 * speed), fps, seconds)
    b = walk(tuple(meet - d1 * 380), tuple(d1 * speed), fps, seconds)
    b[np.hypot(*(a - b).T) < 0.25 * h] = np.nan  # behind the other one
    answer, truth = video({0: a, 1: b}, {0: h, 1: h}, seed=seed, fps=fps, poses={0: POSE, 1: POSE})
    return Scene(f"look-alikes crossing {angle:g} deg, {speed:g} px/s, {fps:g} fps", "lookalike", answer, truth)


def occlusion(fps: float, seconds: float = 0.8, behind: str = "standing", seed: int = 0) -> Scene:
    """A walker hidden ``seconds`` behind a person standing still (or walking the same way, slower), then
    out the other side; a third person walks elsewhere."""
    length = seconds + 3.0
    front = walk((640, 420), (0, 0), fps, length) if behind == "standing" else walk((520, 420), (80, 0), fps, length)
    walker = walk((640 - 1.5 * 150, 400), (150, 0), fps, length)
    walker = hide(walker, fps, 1.5 - seconds / 2, seconds)
    other = walk((1000, 250), (-60, 20), fps, length)
    paths, heights = {0: front, 1: walker, 2: other}, {0: 300.0, 1: 220.0, 2: 200.0}
    answer, truth = video(paths, heights, seed=seed, fps=fps)
    return Scene(f"hidden {seconds:g} s behind a {behind} person, {fps:g} fps", "occlusion", answer, truth)


def stranger(fps: float, where: str = "edge", seed: int = 0) -> Scene:
    """Someone leaves (out of the picture, or into a doorway mid-picture) and 0.4 s later a much smaller
    person with other proportions comes in there: the newcomer must get a new id."""
    if where == "edge":
        a = out_of_picture(walk((900, 400), (200, 0), fps, 4.0))
        gone = np.flatnonzero(np.isnan(a[:, 0]))[0] / fps
    else:  # walks into a doorway at x = 800
        a = walk((500, 400), (150, 0), fps, 4.0)
        gone = 2.0
        a[round(gone * fps) :] = np.nan
    enter = round((gone + 0.4) * fps)
    b = walk((1250 if where == "edge" else 800, 430), (-120, 0), fps, 4.0)  # from there when it comes in
    b = np.vstack([np.full((enter, 2), np.nan), b[: len(b) - enter]])
    c = walk((300, 300), (20, 10), fps, 4.0)
    child = POSE * np.array([1.3, 1.0]) + np.array([0, 0.05]) * (POSE[:, 1:] > 0.1)  # wider, longer legs
    answer, truth = video({0: a, 1: b, 2: c}, {0: 230.0, 1: 140.0, 2: 200.0}, seed=seed, fps=fps, poses={1: child})
    name = f"stranger enters where someone left ({where}), {fps:g} fps"
    return Scene(name, "stranger", answer, truth, strangers=(1,))


def reenter(fps: float, away_s: float = 10 / 30, seed: int = 0) -> Scene:
    """Someone walks out of the picture and comes back the way they left ``away_s`` seconds later."""
    turn = 1.2 + away_s / 2  # at the edge (x = 20) after 1.2 s, back there away_s later
    t = np.arange(round((turn + 2.0) * fps)) / fps
    a = np.column_stack([20 - 75 * away_s + 150 * np.abs(t - turn), np.full(len(t), 400.0)])
    a = out_of_picture(a)
    b = walk((900, 380), (-20, 0), fps, len(t) / fps)
    answer, truth = video({0: a, 1: b}, {0: 220.0, 1: 220.0}, seed=seed, fps=fps)
    return Scene(f"leaves and comes back {away_s:.2g} s later, {fps:g} fps", "reenter", answer, truth)


def group(fps: float, people: int = 22, seconds: float = 6.0, seed: int = 0) -> Scene:
    """``people`` players on smooth random paths (up to 360 px/s = 12 px/frame at 30 fps), crossing often,
    each missed by the detector for 1-4 frames now and then."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * fps)
    size = (1920, 1080)
    paths, heights = {}, {}
    for i in range(people):
        pos = np.array([rng.uniform(150, 1770), rng.uniform(150, 930)])
        vel = rng.normal(0, 150, 2)
        path = np.empty((frames, 2))
        for f in range(frames):
            vel = vel + rng.normal(0, 400, 2) / fps  # smooth turns (px/s per second)
            vel *= min(1.0, 360 / max(float(np.hypot(*vel)), 1e-9))
            for k in range(2):  # bounce off the borders
                if not 100 < pos[k] + vel[k] / fps < size[k] - 100:
                    vel[k] = -vel[k]
            pos = pos + vel / fps
            path[f] = pos
        f = 0
        while f < frames:  # missed for 1-4 frames about once per second
            f += int(rng.integers(1, int(2 * fps)))
            path[f : f + int(rng.integers(1, 5))] = np.nan
            f += 5
        paths[i], heights[i] = path, float(rng.uniform(100, 130))
    answer, truth = video(paths, heights, seed=seed, fps=fps, size=size)
    return Scene(f"{people} players, smooth paths with misses, {fps:g} fps", "group", answer, truth)


def legacy_scenes() -> list[Scene]:
    """The scenes of tests/test_tracking.py's accuracy tests (30 fps, frame-based paths)."""
    out = []
    paths = {0: line((300, 400), (5, 0), 120), 1: line((900, 400), (-5, 0), 120)}
    out.append(Scene("crossing (test)", "legacy", *video(paths, {0: 220, 1: 220}, seed=1)))
    paths = {0: line((200, 250), (6, 2), 150), 1: line((1100, 520), (-5, -1.5), 150)}
    out.append(Scene("diagonal, two sizes (test)", "legacy", *video(paths, {0: 260, 1: 180}, seed=2)))
    a = line((200, 360), (4, 0), 100)
    a[40:47] = np.nan
    paths = {0: a, 1: line((900, 300), (-2, 1), 100)}
    out.append(Scene("missing 7 frames (test)", "legacy", *video(paths, {0: 200, 1: 200}, seed=3)))
    a = np.vstack([line((150, 360), (-4, 0), 40), line((150 - 4 * 38, 360), (4, 0), 40)])
    a[30:38] = np.nan
    paths = {0: a, 1: line((800, 360), (0, 0), 80)}
    out.append(Scene("comes back (test)", "legacy", *video(paths, {0: 200, 1: 200}, seed=4)))
    out.append(Scene("crowd of ten (test)", "legacy", *crowd()))
    return out


def crowd(n: int = 10, frames: int = 200, seed: int = 6) -> tuple[dict, dict]:
    """``n`` random walkers (sizes 150-260 px) bouncing in the picture, 30 fps."""
    rng = np.random.default_rng(seed)
    paths, heights = {}, {}
    for i in range(n):
        pos = np.array([rng.uniform(100, 1180), rng.uniform(150, 600)])
        vel = rng.normal(0, 3, 2)
        path = []
        for _ in range(frames):
            vel = 0.95 * vel + rng.normal(0, 0.4, 2)
            pos = pos + vel
            if not 60 < pos[0] < 1220:
                vel[0] = -vel[0]
            if not 120 < pos[1] < 620:
                vel[1] = -vel[1]
            path.append(pos.copy())
        paths[i] = np.array(path)
        heights[i] = rng.uniform(150, 260)
    return video(paths, heights, seed=seed)


def all_scenes(fps: tuple[float, ...] = FPS) -> list[Scene]:
    """Every scene kind: look-alike crossings at several angles and speeds, occlusions of 0.3-1.5 s behind a
    standing or a moving person, strangers, leaving and coming back, a group of 22, and the tests' scenes."""
    out: list[Scene] = []
    for f in fps:
        out += [lookalike_crossing(f, angle, speed) for angle, speed in ((180, 150), (150, 250), (120, 100))]
        out += [occlusion(f, s, behind) for s, behind in ((0.3, "standing"), (0.8, "standing"), (1.5, "moving"))]
        out += [stranger(f, "edge"), stranger(f, "doorway"), reenter(f), reenter(f, 1.0)]
        out.append(group(f))
    return out + legacy_scenes()


# --------------------------------------------------------------------------------------------- scoring


def detections(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frame_num, person_idx and true identity of every detection, in frame then person order."""
    keys = sorted(scene.truth)
    frame = np.array([k[0] for k in keys], dtype=np.int64)
    person = np.array([k[1] for k in keys], dtype=np.int64)
    return frame, person, np.array([scene.truth[k] for k in keys], dtype=np.int64)


def score(scene: Scene, ids: dict[tuple[int, int], Any]) -> dict[str, float]:
    """IDF1, MOTA and ID switches (py-motmetrics) of ``ids``: the id given to each ``(frame_num,
    person_idx)`` (missing or None: no id). A hypothesis matches the truth only on its own detection."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    frame, person, ident = detections(scene)
    for f in np.unique(frame):
        at = np.flatnonzero(frame == f)
        hyp = [(k, ids.get((int(f), int(person[k])))) for k in at]
        hyp = [(k, h) for k, h in hyp if h is not None]
        dist = np.full((len(at), len(hyp)), np.nan)
        for col, (k, _) in enumerate(hyp):
            dist[np.flatnonzero(at == k)[0], col] = 0.0
        acc.update(ident[at].tolist(), [int(h) for _, h in hyp], dist, frameid=int(f))
    metrics = mm.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="scene")
    row = metrics.iloc[0]
    return {"idf1": float(row["idf1"]), "mota": float(row["mota"]), "idsw": int(row["num_switches"])}


def strangers_kept_apart(scene: Scene, ids: dict[tuple[int, int], Any]) -> bool:
    """Whether no id of a stranger was ever given to another identity."""
    frame, person, ident = detections(scene)
    given = np.array([ids.get((int(f), int(p)), -1) for f, p in zip(frame, person, strict=True)])
    for s in scene.strangers:
        theirs = set(given[ident == s].tolist()) - {-1}
        if theirs & set(given[ident != s].tolist()):
            return False
    return True
