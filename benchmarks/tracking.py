"""Benchmark: what ``assign_tracks`` adds to flattening a large video job result.

Generates the synthetic result of ``benchmarks/flatten.py`` (its generator, imported: default 1 hour at 30 fps =
108,000 frames, 3 persons each, about 5.5 M keypoint rows), then, in this one process, times
``keypoints_table(raw)`` (flatten, from the raw bytes in memory) and ``assign_tracks(table)``, and prints
both, the ratio tracking / flatten and whether it meets the goal (at most 25%), for each variant.

That generator draws every person-frame at random (boxes and keypoints anywhere), so nobody moves smoothly
and almost every link is a coin toss; ``--smooth`` replaces the coordinates by people walking smoothly
(the realistic case) before timing. Both are reported by default.

    .venv/bin/python benchmarks/tracking.py                  # full run (108,000 frames)
    .venv/bin/python benchmarks/tracking.py --frames 10800   # quick run (6 minutes of video)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flatten import generate  # benchmarks/flatten.py

#: The goal: tracking adds at most this share to flattening time.
GOAL = 0.25


def smooth(raw: bytes, seed: int = 0) -> bytes:
    """The same body with each person walking smoothly (a slow sine path per person slot), as JSON bytes."""
    import numpy as np

    body = json.loads(raw)
    rng = np.random.default_rng(seed)
    base = rng.uniform(-40, 40, size=(17, 2))
    for ann in body["annotations"]:
        t = ann["frame_num"] / 30.0
        for p, obj in enumerate(ann["objects"]):
            cx = 640 + 400 * np.sin(0.2 * t + 2.1 * p)
            cy = 360 + 150 * np.sin(0.13 * t + 1.3 * p)
            kp = obj["keypoints"]
            pts = base + np.array([cx, cy])
            for k in range(17):
                if kp[3 * k] or kp[3 * k + 1] or kp[3 * k + 2]:  # not undetected (0, 0, 0)
                    kp[3 * k], kp[3 * k + 1] = round(float(pts[k, 0]), 2), round(float(pts[k, 1]), 2)
            obj["bbox"] = [round(cx - 45, 2), round(cy - 45, 2), 90.0, 90.0]
    return json.dumps(body).encode()


def measure(raw: bytes, repeat: int) -> tuple[int, float, float, int]:
    from airflow_provider_kakaopose.tables import keypoints_table
    from airflow_provider_kakaopose.tracking import assign_tracks

    flat, track = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        table = keypoints_table(raw, source="video.mp4")
        flat.append(time.perf_counter() - t)
        t = time.perf_counter()
        tracked = assign_tracks(table)
        track.append(time.perf_counter() - t)
    ids = tracked.column("track_id")
    import pyarrow.compute as pc

    return table.num_rows, min(flat), min(track), int(pc.max(ids).as_py() or 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=108_000, help="frames of video (default 108,000 = 1 h)")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the best time is kept")
    parser.add_argument("--random-only", action="store_true", help="skip the smooth-motion variant")
    args = parser.parse_args()

    # imports are not part of the timed work
    import numpy  # noqa: F401
    import pyarrow.compute
    import pyarrow.json  # noqa: F401
    import scipy.optimize  # noqa: F401

    import airflow_provider_kakaopose.tables
    import airflow_provider_kakaopose.tracking  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "result.json")
        t = time.perf_counter()
        generate(src, args.frames, args.persons, args.seed)
        with open(src, "rb") as f:
            raw = f.read()
    print(
        f"synthetic result: {args.frames:,} frames x {args.persons} persons, {len(raw) / 1e6:.1f} MB JSON "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )
    variants = [("random (flatten.py)", raw)]
    if not args.random_only:
        variants.append(("smooth motion", smooth(raw, args.seed)))
    print(f"{'data':<20} {'rows':>10} {'flatten s':>10} {'tracking s':>11} {'ratio':>7} {'tracks':>8}  goal")
    for name, body in variants:
        rows, flat, track, tracks = measure(body, args.repeat)
        verdict = "pass" if track / flat <= GOAL else "FAIL"
        print(
            f"{name:<20} {rows:>10,} {flat:>10.2f} {track:>11.3f} {track / flat:>7.1%} {tracks:>8,}  "
            f"{verdict} (<= {GOAL:.0%})"
        )


if __name__ == "__main__":
    main()
