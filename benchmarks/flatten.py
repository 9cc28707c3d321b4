"""Benchmark: flatten + write a large video job result, naive baseline vs ``airflow_provider_kakaopose.tables``.

Generates a seeded synthetic success body (default: 1 hour at 30 fps = 108,000 frames, 3 persons each, about
5.5 M keypoint rows and 160 MB of JSON in the service's format), then runs in separate child processes:

* ``baseline``: ``json.loads`` + a Python loop building one dict per row + ``pandas.DataFrame.to_parquet``;
* ``project``: ``write_parquet(keypoints_reader(raw_bytes), path)`` (the operators' fast path);
* ``project-table``: ``write_parquet(keypoints_table(raw_bytes), path)`` (the whole table in memory first).

Each child times its own work (reading the JSON file, flattening, writing Parquet; imports excluded) and
reports its peak RSS (``ru_maxrss``, imports included). The parent prints both and the ratios.

    .venv/bin/python benchmarks/flatten.py                  # full run (108,000 frames)
    .venv/bin/python benchmarks/flatten.py --frames 10800   # quick run (6 minutes of video)

``--operator`` measures the default operator path instead, as a DAG runs it: an emulator in its own process
makes a finished job of each length (default 1 h and 3 h, 3 persons), and in a fresh child process each

* ``operator``: ``KakaoPoseJobToParquetOperator(...).execute(context)`` with ``track_people=True`` (the
  default): the body downloaded into a spool, flattened, tracked and written as the operator does;
* ``whole-table``: what the operator did before streaming: ``get_job_bytes`` (the whole body), the whole
  table, ``assign_tracks`` on it, then the Parquet write;
* ``file``: the operator's streaming path (flatten, track, write) on the body saved to a local file — the
  baseline's own input, without the HTTP download;
* ``baseline`` (first length only): the naive path above, on the same body saved to a file;

reports its wall time and its *working memory*: the peak RSS during the work (the kernel's peak mark reset
after the imports) minus the RSS after the imports. Goals: operator working memory <= 1x the JSON size on the
first length and <= 1.25x the first length's on the others; operator >= 8x faster than the baseline.

    .venv/bin/python benchmarks/flatten.py --operator                        # 1 h and 3 h (minutes, GBs)
    .venv/bin/python benchmarks/flatten.py --operator --lengths 10800,32400  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _memory import peak_rss, reset_peak_rss, rss_now

FPS = 30.0
SKELETON = [[1, 2], [1, 3], [2, 3], [2, 4], [3, 5], [4, 6], [5, 7], [6, 7], [6, 8], [6, 12], [7, 9]]
SKELETON += [[7, 13], [8, 10], [9, 11], [12, 13], [14, 12], [15, 13], [16, 14], [17, 15]]
NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder"]
NAMES += ["left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee"]
NAMES += ["right_knee", "left_ankle", "right_ankle"]


def generate(path: str, frames: int, persons: int = 3, seed: int = 0) -> None:
    """Write a synthetic success body like the service's (``json.dumps`` formatting, 2-decimal coordinates).

    About 5% of keypoints are undetected (``0.0, 0.0, 0.0``) and 1% of frames are empty.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write('{"annotations": [')
        step = 1000
        for f0 in range(0, frames, step):
            n = min(step, frames - f0)
            kp = rng.uniform(0, 1280, size=(n, persons, 17, 3))
            kp[..., 2] = rng.uniform(0, 1, size=(n, persons, 17))
            kp[rng.random((n, persons, 17)) < 0.05] = 0.0
            kps = np.round(kp, 2).reshape(n, persons, 51).tolist()
            bbox = np.round(rng.uniform(0, 700, size=(n, persons, 4)), 2).tolist()
            area = np.round(rng.uniform(1e4, 3e5, size=(n, persons)), 4).tolist()
            score = np.round(rng.uniform(0, 1, size=(n, persons)), 4).tolist()
            empty = rng.random(n) < 0.01
            parts = []
            for i in range(n):
                objects = [
                    {
                        "area": area[i][p],
                        "bbox": bbox[i][p],
                        "category_id": 1,
                        "keypoints": kps[i][p],
                        "score": score[i][p],
                    }
                    for p in range(0 if empty[i] else persons)
                ]
                parts.append(json.dumps({"frame_num": f0 + i, "objects": objects}))
            if f0:
                f.write(", ")
            f.write(", ".join(parts))
        f.write("]")
        rest = {
            "categories": [
                {"id": 1, "keypoints": NAMES, "name": "person", "skeleton": SKELETON, "supercategory": "person"}
            ],
            "info": {"contributor": "Kakao Brain Corp.", "description": "synthetic", "version": "191227"},
            "job_id": "bb91c265-341d-4661-813b-870cff0de1d3",
            "status": "success",
            "video": {"fps": FPS, "frames": frames, "height": 720, "width": 1280},
        }
        f.write(", " + json.dumps(rest)[1:])


def run_baseline(src: str, dst: str) -> int:
    """The naive way: parse to Python objects, one dict per row, pandas to_parquet."""
    import pandas as pd

    with open(src, "rb") as f:
        result = json.loads(f.read())
    fps = result["video"]["fps"]
    rows = []
    for ann in result["annotations"]:
        for p_i, person in enumerate(ann["objects"]):
            kp = person["keypoints"]
            bx, by, bw, bh = person["bbox"]
            for k in range(17):
                x, y, s = kp[3 * k], kp[3 * k + 1], kp[3 * k + 2]
                undetected = x == 0 and y == 0 and s == 0
                rows.append(
                    {
                        "source": "video.mp4",
                        "job_id": result["job_id"],
                        "frame_num": ann["frame_num"],
                        "time_s": ann["frame_num"] / fps,
                        "person_idx": p_i,
                        "keypoint_id": k + 1,
                        "keypoint": NAMES[k],
                        "x": None if undetected else x,
                        "y": None if undetected else y,
                        "score": s,
                        "person_score": person["score"],
                        "bbox_x": bx,
                        "bbox_y": by,
                        "bbox_w": bw,
                        "bbox_h": bh,
                        "area": person["area"],
                    }
                )
    pd.DataFrame(rows).to_parquet(dst, index=False)
    return len(rows)


def run_project(src: str, dst: str, whole_table: bool = False) -> int:
    from airflow_provider_kakaopose.tables import keypoints_reader, keypoints_table, write_parquet

    with open(src, "rb") as f:
        raw = f.read()
    if whole_table:
        return write_parquet(keypoints_table(raw, source="video.mp4"), dst)
    return write_parquet(keypoints_reader(raw, source="video.mp4"), dst)


# --------------------------------------------------------------------------------------------- operator path

BENCH_KEY = "flatten-benchmark-key"
CONN_ID = "kakao_pose_flatten_bench"


class _TI:
    """The little of a task instance the operator touches outside Airflow (its XComs)."""

    dag_id, run_id, task_id, map_index = "bench", "bench-run", "load", -1

    def xcom_push(self, key: str, value: object) -> None:
        pass


def operator_child(kind: str, base: str, job_id: str, src: str, dst: str) -> None:
    """One measured run of the operator path (``operator`` / ``whole-table``) or the baseline, in this process."""
    import gc

    import numpy  # noqa: F401  - imports are not part of the measured work
    import pandas  # noqa: F401
    import pyarrow.parquet

    if kind != "baseline":
        conn = {"conn_type": "kakao_pose", "host": base, "password": BENCH_KEY, "extra": {"read_timeout": 600}}
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(conn)
        import pyarrow.compute
        import pyarrow.json  # noqa: F401
        import scipy.optimize  # noqa: F401

        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
        from airflow_provider_kakaopose.operators.pose import KakaoPoseJobToParquetOperator
        from airflow_provider_kakaopose.tables import keypoints_reader, write_parquet
        from airflow_provider_kakaopose.tracking import assign_tracks

        with KakaoPoseHook(CONN_ID) as hook:  # the connection looked up, the session's modules imported
            hook.get_job_status("00000000-0000-0000-0000-000000000000")
    gc.collect()
    rss0 = rss_now()
    reset_peak_rss()
    start = time.perf_counter()
    if kind == "baseline":
        rows = run_baseline(src, dst)
    elif kind == "operator":
        op = KakaoPoseJobToParquetOperator(task_id="load", job_id=job_id, output_uri=dst, kakao_pose_conn_id=CONN_ID)
        rows = op.execute({"ti": _TI()})["rows"]
    elif kind == "file":  # the operator's streaming path on the baseline's own input: the body in a local file
        from airflow_provider_kakaopose.tracking import assign_tracks_reader

        with open(src, "rb") as f:
            rows = write_parquet(assign_tracks_reader(keypoints_reader(f, source=None)), dst)
    else:  # whole-table: the operator's load before streaming (whole body, whole table, then tracking)
        with KakaoPoseHook(CONN_ID) as hook:
            raw = hook.get_job_bytes(job_id)
        table = keypoints_reader(raw, source=None).read_all()
        del raw
        table = assign_tracks(table)
        rows = write_parquet(table.to_reader(), dst)
        del table
    wall = time.perf_counter() - start
    peak = peak_rss()
    out = {"kind": kind, "rows": rows, "wall_s": wall, "rss_after_imports": rss0, "peak_rss": peak}
    print(json.dumps({**out, "working": peak - rss0, "bytes": os.path.getsize(dst)}))


def _operator_measure(kind: str, base: str, job_id: str, src: str, dst: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--operator-child", kind, base, job_id, src, dst],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise SystemExit(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def _finished_job(base: str, frames: int, persons: int, path: str) -> tuple[str, int, float]:
    """Submit a job of ``frames`` x ``persons`` to the emulator, wait for it, save its body to ``path``."""
    import requests

    headers = {"Authorization": f"KakaoAK {BENCH_KEY}"}
    url = f"https://example.com/bench.mp4?frames={frames}&persons={persons}&waiting_s=0&processing_s=0"
    t = time.perf_counter()
    job_id = requests.post(f"{base}/pose/job", data={"video_url": url}, headers=headers, timeout=60).json()["job_id"]
    while True:
        with requests.get(f"{base}/pose/job/{job_id}", headers=headers, timeout=600, stream=True) as resp:
            head = resp.raw.read(4096)
            if b'"status": "success"' in head or b'"annotations"' in head:
                with open(path, "wb") as f:
                    f.write(head)
                    for chunk in resp.iter_content(1 << 20):
                        f.write(chunk)
                break
        time.sleep(0.5)
    return job_id, os.path.getsize(path), time.perf_counter() - t


def operator_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _emulator import start_emulator

    lengths = [int(v) for v in args.lengths.split(",")]
    server, base = start_emulator(BENCH_KEY, "--port", "0")
    results: list[tuple[int, int, dict]] = []
    try:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            for n, frames in enumerate(lengths):
                src = os.path.join(tmp, f"job-{frames}.json")
                job_id, size, took = _finished_job(base, frames, args.persons, src)
                what = f"{frames:,} frames x {args.persons} persons, {size / 1e6:.1f} MB of JSON"
                print(f"job: {what} (ready in {took:.1f} s)")
                kinds = ["operator", "whole-table", "file"]
                if n == 0 and not args.skip_baseline:
                    kinds.insert(0, "baseline")
                for kind in kinds:
                    r = _operator_measure(kind, base, job_id, src, os.path.join(tmp, f"{kind}-{frames}.parquet"))
                    results.append((frames, size, r))
                    print(f"  {kind:<12} {r['wall_s']:7.2f} s  working {r['working'] / 1e6:7.0f} MB", flush=True)
                os.remove(src)
    finally:
        server.stop()
    print()
    print(
        f"{'frames':>8} {'JSON MB':>8} {'path':<12} {'rows':>11} {'wall s':>7} {'working MB':>11} {'working/JSON':>13}"
    )
    for frames, size, r in results:
        print(
            f"{frames:>8,} {size / 1e6:>8.1f} {r['kind']:<12} {r['rows']:>11,} {r['wall_s']:>7.2f} "
            f"{r['working'] / 1e6:>11.0f} {r['working'] / size:>13.2f}"
        )
    by = {(f, r["kind"]): (size, r) for f, size, r in results}
    first = lengths[0]
    size0, op0 = by[(first, "operator")]
    print()
    ok = True
    ratio = op0["working"] / size0
    ok &= ratio <= 1.0
    verdict = "PASS" if ratio <= 1.0 else "FAIL"
    print(f"[{verdict}] operator, {first:,} frames: working memory {ratio:.2f}x the JSON (<= 1x)")
    for frames in lengths[1:]:
        growth = by[(frames, "operator")][1]["working"] / op0["working"]
        ok &= growth <= 1.25
        print(
            f"[{'PASS' if growth <= 1.25 else 'FAIL'}] operator, {frames:,} frames: working memory {growth:.2f}x "
            f"the {first:,}-frame run's (<= 1.25x)"
        )
    if (first, "baseline") in by:
        base_wall = by[(first, "baseline")][1]["wall_s"]
        for kind in ("operator", "whole-table", "file"):
            speed = base_wall / by[(first, kind)][1]["wall_s"]
            if kind == "operator":
                ok &= speed >= 8
            print(
                f"[{'PASS' if speed >= 8 else 'FAIL'}] {kind}, {first:,} frames: {speed:.1f}x faster than the baseline "
                f"({base_wall:.1f} s){' (>= 8x)' if kind == 'operator' else ''}"
            )
    print("ALL GOALS MET" if ok else "SOME GOALS MISSED")


def child(kind: str, src: str, dst: str) -> None:
    import numpy  # noqa: F401  - imports are not part of the timed work
    import pandas  # noqa: F401
    import pyarrow.parquet

    if kind != "baseline":
        import pyarrow.compute
        import pyarrow.json  # noqa: F401

        import airflow_provider_kakaopose.tables  # noqa: F401
    start = time.perf_counter()
    whole = kind == "project-table"
    rows = run_baseline(src, dst) if kind == "baseline" else run_project(src, dst, whole_table=whole)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"kind": kind, "rows": rows, "wall_s": wall, "peak_rss": peak, "bytes": os.path.getsize(dst)}))


def measure(kind: str, src: str, dst: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--src", src, "--dst", dst],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=108_000, help="frames of video (default 108,000 = 1 h)")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where to put the JSON and Parquet files (default: a temp dir)")
    parser.add_argument("--skip-baseline", action="store_true", help="only run the project's path")
    parser.add_argument("--operator", action="store_true", help="measure the operator path (see above)")
    parser.add_argument("--lengths", default="108000,324000", help="--operator: frames of each job (1 h, 3 h)")
    parser.add_argument("--operator-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operator_child:
        operator_child(*args.operator_child)
        return
    if args.operator:
        operator_main(args)
        return
    if args.child:
        child(args.child, args.src, args.dst)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        src = os.path.join(tmp, "result.json")
        t = time.perf_counter()
        generate(src, args.frames, args.persons, args.seed)
        size = os.path.getsize(src)
        print(
            f"synthetic result: {args.frames:,} frames x {args.persons} persons, {size / 1e6:.1f} MB JSON "
            f"(generated in {time.perf_counter() - t:.1f} s)"
        )
        kinds = ["project", "project-table"] if args.skip_baseline else ["baseline", "project", "project-table"]
        results = {k: measure(k, src, os.path.join(tmp, f"{k}.parquet")) for k in kinds}
        print(f"{'path':<14} {'rows':>10} {'wall s':>8} {'peak RSS MB':>12} {'RSS/JSON':>9} {'Parquet MB':>11}")
        for k, r in results.items():
            print(
                f"{k:<14} {r['rows']:>10,} {r['wall_s']:>8.2f} {r['peak_rss'] / 1e6:>12.0f} "
                f"{r['peak_rss'] / size:>9.2f} {r['bytes'] / 1e6:>11.1f}"
            )
        if "baseline" in results:
            base = results["baseline"]
            for k in kinds[1:]:
                r = results[k]
                print(
                    f"{k}: {base['wall_s'] / r['wall_s']:.1f}x faster than the baseline, "
                    f"{base['peak_rss'] / r['peak_rss']:.1f}x less peak memory; "
                    f"peak RSS = {r['peak_rss'] / size:.2f}x the JSON size"
                )


if __name__ == "__main__":
    main()
