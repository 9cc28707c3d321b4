"""Benchmark: how well ``assign_tracks`` follows people, what it adds to flattening, and its streaming memory.

1. **Scenes** (tests/scenes.py, shared with the tests): look-alikes crossing, people hidden behind others,
   strangers entering where someone left, people leaving and coming back, 22 players, at 25, 30 and 60 fps,
   and the scenes of tests/test_tracking.py. Each is scored by py-motmetrics (IDF1, ID switches) for our
   tracker and for norfair 2.3 (a Kalman filter per keypoint; the side-by-side anchor, run by
   benchmarks/_norfair_anchor.py in its own environment, ``--norfair-python``; skipped when absent).
   Goal: IDF1 >= 0.98 on every scene, and no stranger given someone else's id.
2. **Speed**: the 1-hour, 3-person result of ``benchmarks/flatten.py``'s generator (108,000 frames, 5.5 M
   keypoint rows), with each person walking smoothly (``smooth``, the realistic case) and as generated
   (``random``: every person-frame anywhere, the worst case). Per run, in this process: ``keypoints_table``
   (flatten) then ``assign_tracks``; the median of ``--repeat`` runs of each. ``--baseline DIR`` also times the
   tracker of another source tree (e.g. the code before a change) on the same tables, interleaved. Goal:
   tracking <= 25 % of the flatten time.
3. **Streaming memory**: in a fresh process per length (1/4 of ``--frames``, and ``--frames``),
   ``assign_tracks_reader`` over the smooth result's batches (each output batch hashed, then dropped): the
   peak RSS above the RSS before it, next to ``assign_tracks`` on the whole table (its own process), and
   whether the two gave the same ids (hashes). Goal: ids identical, and the 4x longer video's streaming
   memory within 1.25x the shorter one's (a 10x shorter one has too few chunks to be in its steady state).

    .venv/bin/python benchmarks/tracking.py                      # everything (a few minutes)
    .venv/bin/python benchmarks/tracking.py --baseline /tmp/base # + the old tracker, same run
    .venv/bin/python benchmarks/tracking.py --frames 10800 --skip-memory   # quicker
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from _memory import peak_rss, reset_peak_rss, rss_now  # benchmarks/_memory.py
from flatten import generate  # benchmarks/flatten.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The goals: tracking adds at most this share to flattening time; every scene at least this IDF1.
GOAL = 0.25
IDF1_GOAL = 0.98
NORFAIR_PYTHON = os.path.join(ROOT, ".venv-norfair", "bin", "python")


# --------------------------------------------------------------------------------------------- scenes


def _ids_by_detection(table: Any) -> dict[tuple[int, int], Any]:
    import pyarrow.compute as pc

    first = table.filter(pc.equal(table.column("keypoint_id"), 1))
    cols = (first.column(c).to_pylist() for c in ("frame_num", "person_idx", "track_id"))
    return {(f, p): t for f, p, t in zip(*cols, strict=True)}


def _norfair_ids(scenes: list, python: str) -> list[dict] | None:
    """norfair's id of each detection of each scene (benchmarks/_norfair_anchor.py in ``python``'s env)."""
    import numpy as np
    from scenes import detections

    if not os.path.exists(python):
        return None
    arrays: dict[str, Any] = {}
    keys = []
    for k, scene in enumerate(scenes):
        frame, person, _ = detections(scene)
        objects = scene.answer["annotations"]
        kp = [np.reshape(objects[f]["objects"][p]["keypoints"], (17, 3)) for f, p in zip(frame, person, strict=True)]
        arrays.update({f"frame_{k}": frame, f"kp_{k}": np.array(kp), f"fps_{k}": scene.fps})
        keys.append(list(zip(frame.tolist(), person.tolist(), strict=True)))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, **arrays)
        subprocess.run([python, os.path.join(HERE, "_norfair_anchor.py"), src, dst], check=True)
        out = np.load(dst)
        return [
            {key: (int(i) if i >= 0 else None) for key, i in zip(keys[k], out[f"ids_{k}"], strict=True)}
            for k in range(len(scenes))
        ]


def scenes_main(args: argparse.Namespace) -> bool:
    from scenes import all_scenes, score, strangers_kept_apart

    from airflow_provider_kakaopose.tables import keypoints_table
    from airflow_provider_kakaopose.tracking import assign_tracks

    scenes = all_scenes()
    anchor = _norfair_ids(scenes, args.norfair_python)
    if anchor is None:
        print(f"(norfair anchor skipped: no {args.norfair_python})")
    baseline = _baseline_tracker(args.baseline) if args.baseline else None
    head = f"{'scene':<56} {'ours IDF1':>9} {'IDSW':>4} {'norfair IDF1':>12} {'IDSW':>4}"
    print(head + (f" {'before IDF1':>11} {'IDSW':>4}" if baseline else "") + "  goal")
    ok = True
    for k, scene in enumerate(scenes):
        table = keypoints_table(scene.answer)
        ids = _ids_by_detection(assign_tracks(table, **scene.params))
        ours = score(scene, ids)
        apart = strangers_kept_apart(scene, ids)
        passed = ours["idf1"] >= IDF1_GOAL and apart
        ok &= passed
        line = f"{scene.name:<56} {ours['idf1']:>9.3f} {ours['idsw']:>4}"
        nf = score(scene, anchor[k]) if anchor is not None else None
        line += f" {nf['idf1']:>12.3f} {nf['idsw']:>4}" if nf else f" {'':>12} {'':>4}"
        if baseline is not None:
            old = score(scene, _ids_by_detection(baseline(table, **scene.params)))
            line += f" {old['idf1']:>11.3f} {old['idsw']:>4}"
        note = "" if apart else " (a stranger got someone's id)"
        print(f"{line}  {'pass' if passed else 'FAIL'}{note}")
    print(f"[{'PASS' if ok else 'FAIL'}] every scene IDF1 >= {IDF1_GOAL} and strangers kept apart")
    return ok


# --------------------------------------------------------------------------------------------- speed


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


def _baseline_tracker(tree: str) -> Any:
    """The ``assign_tracks`` of another source tree's airflow_provider_kakaopose/tracking.py."""
    path = os.path.join(tree, "airflow_provider_kakaopose", "tracking.py")
    spec = importlib.util.spec_from_file_location("_baseline_tracking", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.assign_tracks


def measure(raw: bytes, repeat: int, baseline: Any) -> dict[str, Any]:
    """Median times of flatten, our tracking and the baseline's (interleaved), and the tracks found."""
    import pyarrow.compute as pc

    from airflow_provider_kakaopose.tables import keypoints_table
    from airflow_provider_kakaopose.tracking import assign_tracks

    times: dict[str, list[float]] = {"flatten": [], "ours": [], "baseline": []}
    for _ in range(repeat):
        t = time.perf_counter()
        table = keypoints_table(raw, source="video.mp4")
        times["flatten"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tracked = assign_tracks(table)
        times["ours"].append(time.perf_counter() - t)
        if baseline is not None:
            t = time.perf_counter()
            baseline(table)
            times["baseline"].append(time.perf_counter() - t)
    out = {name: statistics.median(v) for name, v in times.items() if v}
    out["rows"] = table.num_rows
    out["tracks"] = int(pc.max(tracked.column("track_id")).as_py() or 0) + 1
    return out


def speed_main(args: argparse.Namespace) -> bool:
    baseline = _baseline_tracker(args.baseline) if args.baseline else None
    raw = _result(args.frames, args.persons, args.seed)
    variants = [("smooth motion", smooth(raw, args.seed))]
    if not args.smooth_only:
        variants.append(("random (flatten.py)", raw))
    head = f"{'data':<20} {'rows':>10} {'flatten s':>10} {'tracking s':>11} {'ratio':>7} {'tracks':>8}"
    print(head + (f" {'baseline s':>11} {'ratio':>7}" if baseline else "") + "  goal")
    ok = True
    for name, body in variants:
        m = measure(body, args.repeat, baseline)
        ratio = m["ours"] / m["flatten"]
        ok &= ratio <= GOAL or name != "smooth motion"
        line = f"{name:<20} {m['rows']:>10,} {m['flatten']:>10.2f} {m['ours']:>11.3f} {ratio:>7.1%} {m['tracks']:>8,}"
        if baseline:
            line += f" {m['baseline']:>11.3f} {m['baseline'] / m['flatten']:>7.1%}"
        print(f"{line}  {'pass' if ratio <= GOAL else 'FAIL'} (<= {GOAL:.0%})")
    print(f"(median of {args.repeat} runs each; the goal is judged on the smooth, realistic data)")
    return ok


def _result(frames: int, persons: int, seed: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "result.json")
        t = time.perf_counter()
        generate(src, frames, persons, seed)
        with open(src, "rb") as f:
            raw = f.read()
    print(
        f"synthetic result: {frames:,} frames x {persons} persons, {len(raw) / 1e6:.1f} MB JSON "
        f"(generated in {time.perf_counter() - t:.1f} s)"
    )
    return raw


# --------------------------------------------------------------------------------------------- memory


def memory_child(kind: str, frames: int, persons: int, seed: int) -> None:
    """One length, one ``kind`` (``stream`` or ``whole``) of tracking on the smooth result: its extra peak RSS
    and a hash of the ids (rows in order), as JSON."""
    import hashlib

    import pyarrow as pa

    from airflow_provider_kakaopose.tables import keypoints_table
    from airflow_provider_kakaopose.tracking import assign_tracks, assign_tracks_reader

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "result.json")
        generate(src, frames, persons, seed)
        with open(src, "rb") as f:
            table = keypoints_table(smooth(f.read(), seed), source="video.mp4")
    batches = table.to_batches(max_chunksize=65_536)  # as keypoints_reader gives them
    digest = hashlib.blake2b()
    base = rss_now()
    reset_peak_rss()
    if kind == "stream":
        for batch in assign_tracks_reader(pa.RecordBatchReader.from_batches(table.schema, iter(batches))):
            digest.update(batch.column("track_id").to_numpy().tobytes())  # then the batch is dropped
    else:
        digest.update(assign_tracks(table).column("track_id").to_numpy().tobytes())
    working = peak_rss() - base
    print(json.dumps({"rows": table.num_rows, "working": working, "ids": digest.hexdigest()}))


def memory_main(args: argparse.Namespace) -> bool:
    print(f"{'frames':>8} {'rows':>11} {'streaming MB':>13} {'whole-table MB':>15}  ids identical")
    streams = []
    ok = True
    for frames in (args.frames // 4, args.frames):
        r = {}
        for kind in ("stream", "whole"):
            cmd = [sys.executable, __file__, "--memory-child", kind, str(frames), str(args.persons), str(args.seed)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r[kind] = json.loads(out.strip().splitlines()[-1])
        same = r["stream"]["ids"] == r["whole"]["ids"]
        ok &= same
        streams.append(r["stream"]["working"])
        print(
            f"{frames:>8,} {r['stream']['rows']:>11,} {r['stream']['working'] / 1e6:>13.0f} "
            f"{r['whole']['working'] / 1e6:>15.0f}  {'yes' if same else 'NO'}"
        )
    # Constant memory: the 4x longer video's streaming needs about what the shorter one's does.
    grows = streams[1] / max(streams[0], 1)
    ok &= grows <= 1.25
    verdict = "PASS" if ok else "FAIL"
    print(f"[{verdict}] streaming ids = whole-table ids; memory x{grows:.2f} for a 4x longer video (<= 1.25)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=108_000, help="frames of video (default 108,000 = 1 h)")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each step; the median is kept")
    parser.add_argument("--baseline", help="a source tree whose tracker is timed too (e.g. the code before)")
    parser.add_argument("--norfair-python", default=NORFAIR_PYTHON, help="python of the norfair environment")
    parser.add_argument("--smooth-only", action="store_true", help="skip the random (worst-case) variant")
    parser.add_argument("--skip-scenes", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        kind, frames, persons, seed = args.memory_child
        memory_child(kind, int(frames), int(persons), int(seed))
        return
    # imports are not part of the timed work
    import numpy  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import scipy.optimize  # noqa: F401

    import airflow_provider_kakaopose.tables
    import airflow_provider_kakaopose.tracking  # noqa: F401

    ok = True
    if not args.skip_scenes:
        ok &= scenes_main(args)
        print()
    if not args.skip_speed:
        ok &= speed_main(args)
        print()
    if not args.skip_memory:
        ok &= memory_main(args)
    print("ALL GOALS MET" if ok else "SOME GOALS MISSED")


if __name__ == "__main__":
    main()
