"""The side-by-side anchor of benchmarks/tracking.py: norfair (a Kalman filter per keypoint of each person,
linked by a keypoint distance) on the same scenes, run in its own environment (.venv-norfair: norfair 2.3 needs
numpy < 2 and rich < 15, which the project's pins exclude; see docs/tracking.md).

    .venv-norfair/bin/python benchmarks/_norfair_anchor.py IN.npz OUT.npz

IN holds, per scene ``k``: ``frame_k`` (m,), ``kp_k`` (m, 17, 3) (x, y, score; 0 = undetected) and ``fps_k``;
OUT gets ``ids_k`` (m,): norfair's id of each detection, -1 where it gave none. Only numpy and norfair here.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from norfair import Detection, Tracker

#: As for our tracker: a link is refused beyond one box scale of mean keypoint distance; a person is kept
#: (predicted) for 2 s without detections.
DISTANCE_THRESHOLD = 1.0
KEEP_S = 2.0


def keypoint_distance(detection: Detection, tracked) -> float:
    """Mean distance of the keypoints the detection has to the track's Kalman estimate, in box scales."""
    seen = detection.scores > 0
    if not seen.any():
        return 1e9
    pts = detection.points[seen]
    scale = max(float(np.sqrt(np.ptp(pts[:, 0]) * np.ptp(pts[:, 1]))), 1.0)
    return float(np.linalg.norm(pts - tracked.estimate[seen], axis=1).mean() / scale)


def run(frame: np.ndarray, kp: np.ndarray, fps: float) -> np.ndarray:
    tracker = Tracker(
        distance_function=keypoint_distance,
        distance_threshold=DISTANCE_THRESHOLD,
        hit_counter_max=max(int(KEEP_S * fps), 2),
        initialization_delay=0,
        pointwise_hit_counter_max=4,
        detection_threshold=0.01,
        past_detections_length=0,
    )
    ids = np.full(len(frame), -1, dtype=np.int64)
    for f in range(int(frame.max()) + 1 if len(frame) else 0):
        at = np.flatnonzero(frame == f)
        detections = [Detection(points=kp[k, :, :2], scores=kp[k, :, 2], data=int(k)) for k in at]
        for obj in tracker.update(detections=detections):
            # An object matched in this frame has one of this frame's detections as its last one.
            if obj.id is not None and any(obj.last_detection is d for d in detections):
                ids[obj.last_detection.data] = obj.id
    return ids


def main() -> None:
    logging.disable(logging.WARNING)  # norfair's advice to use a vectorised distance, once per scene
    src, dst = sys.argv[1], sys.argv[2]
    data = np.load(src)
    out = {}
    for key in data.files:
        if key.startswith("frame_"):
            k = key[len("frame_") :]
            out[f"ids_{k}"] = run(data[key], data[f"kp_{k}"], float(data[f"fps_{k}"]))
    np.savez(dst, **out)


if __name__ == "__main__":
    main()
