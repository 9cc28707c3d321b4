"""``make demo``: run every example DAG with ``airflow dags test`` and show what landed.

By default it starts the bundled emulator on loopback and a SQLite metadata DB under ``.airflow/demo``
(no key, no network). With ``KAKAO_POSE_API_KEY`` set it uses the real API instead (set
``KAKAO_POSE_DEMO_IMAGES`` / ``KAKAO_POSE_DEMO_VIDEOS`` to real image and video URLs then).

``--engine`` (``make demo-engine``): real poses from the local engine (``.venv-engine``, docs/engine.md) on
real photos and a synthetic video, through the ``kakao_pose_engine`` example DAG.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".airflow" / "demo"
OUTPUT = ROOT / "out" / "demo"
DAG_IDS = [
    "kakao_pose_images",
    "kakao_pose_video",
    "kakao_pose_asset_consumer",
    "kakao_pose_video_sensor",
    "kakao_pose_videos_mapped",
]
LOGICAL_DATE = "2026-01-01"


def airflow_env(conn: dict, home: Path = HOME, output: Path = OUTPUT, conn_id: str = "kakao_pose_default") -> dict:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "KAKAO_POSE_OUTPUT": str(output),
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn),
        }
    )
    env.setdefault("KAKAO_POSE_POLL_INTERVAL", "1")
    return env


def run(cmd: list[str], env: dict[str, str], log: Path) -> bool:
    with log.open("w") as out:
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode == 0


def summarize(files: list[str]) -> None:
    import duckdb

    con = duckdb.connect()
    for path in files:
        rows, frames, persons = con.execute(
            "SELECT count(*), count(DISTINCT frame_num), count(*) FILTER (WHERE keypoint_id = 1) FROM read_parquet(?)",
            [path],
        ).fetchall()[0]
        print(
            f"  {os.path.relpath(path, ROOT)}: {rows} rows, {frames} frame(s) with people, {persons} person detections"
        )
    print("  mean keypoint score over all files:")
    scores = con.execute(
        "SELECT keypoint, round(avg(score), 3) AS mean_score, count(x) AS detected, count(*) AS total "
        "FROM read_parquet(?, union_by_name = true) GROUP BY keypoint_id, keypoint ORDER BY keypoint_id",
        [files],
    ).fetchall()
    for name, score, detected, total in scores:
        print(f"    {name:<15} {score:>6}   detected {detected}/{total}")


def run_dags(dag_ids: list[str], env: dict[str, str], home: Path) -> list[str] | None:
    """``airflow db migrate`` then ``airflow dags test`` each DAG; the ids that failed (None: no DB)."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    start = time.monotonic()
    if not run([airflow, "db", "migrate"], env, home / "db-migrate.log"):
        print(f"airflow db migrate failed; see {home / 'db-migrate.log'}")
        return None
    print(f"Metadata DB ready (SQLite under {os.path.relpath(home, ROOT)}) in {time.monotonic() - start:.1f} s")
    failed = []
    for dag_id in dag_ids:
        start = time.monotonic()
        log = home / f"{dag_id}.log"
        ok = run([airflow, "dags", "test", dag_id, LOGICAL_DATE], env, log)
        status = "ok" if ok else f"FAILED (log: {os.path.relpath(log, ROOT)})"
        print(f"  airflow dags test {dag_id:<26} {status}  {time.monotonic() - start:5.1f} s")
        if not ok:
            failed.append(dag_id)
    return failed


def engine_demo() -> int:
    """Real poses: the local engine from .venv-engine, the sample photos and video, the engine example DAG."""
    from airflow_provider_kakaopose.emulator.process import EmulatorProcess, engine_python

    home, output = ROOT / ".airflow" / "demo-engine", ROOT / "out" / "demo-engine"
    home.mkdir(parents=True, exist_ok=True)
    python = engine_python(ROOT)
    if not python.exists():
        print(f"No engine environment at {python}: run `make engine-install` (or `make demo-engine`)")
        return 1
    samples = output / "samples"
    subprocess.run([str(python), "-m", "airflow_provider_kakaopose.emulator.samples", str(samples)], check=True)
    key = secrets.token_hex(16)
    with EmulatorProcess(python, "--engine", "mediapipe", api_key=key) as engine:
        print(f"Started the local pose engine (MediaPipe BlazePose) at {engine.base_url}")
        conn = {"conn_type": "kakao_pose", "host": engine.base_url, "password": key}
        env = airflow_env(conn, home, output, "kakao_pose_engine")
        env["KAKAO_POSE_ENGINE_SAMPLES"] = str(samples)
        failed = run_dags(["kakao_pose_engine"], env, home)
    photos = sorted(glob.glob(str(output / "kakao_pose_engine" / "**" / "photos.parquet"), recursive=True))
    videos = sorted(glob.glob(str(output / "kakao_pose_engine" / "**" / "video.parquet"), recursive=True))
    if failed is None or failed or not photos or not videos:
        return 1
    import duckdb

    print(f"\nParquet landed under {output}:")
    summarize(photos + videos)
    sql = (
        "SELECT regexp_extract(source, '[^/]+$') AS photo, keypoint, round(x) AS x, round(y) AS y, "
        f"round(score::DOUBLE, 3) AS score FROM read_parquet('{photos[0]}') "
        "WHERE keypoint IN ('nose', 'left_shoulder', 'right_shoulder') ORDER BY photo, keypoint_id"
    )
    print(f"\nDuckDB> {sql}")
    for row in duckdb.sql(sql).fetchall():
        print("  " + "  ".join(str(v) for v in row))
    sql = (
        "SELECT frame_num, round(x) AS nose_x, round(y) AS nose_y FROM "
        f"read_parquet('{videos[0]}') WHERE keypoint = 'nose' AND frame_num % 15 = 0 ORDER BY frame_num"
    )
    print(f"DuckDB> {sql}")
    for frame, x, y in duckdb.sql(sql).fetchall():
        print(f"  frame {frame:>3}: nose at ({x}, {y})   (the photo slides right across the frame)")
    print(f"\nSkeletons drawn over the photos: {photos[0][: -len('.parquet')]}.png")
    print(f"Poses of the video (contact sheet): {videos[0][: -len('.parquet')]}.png")
    return 0


def main() -> int:
    if "--engine" in sys.argv[1:]:
        return engine_demo()
    HOME.mkdir(parents=True, exist_ok=True)
    key = os.environ.get("KAKAO_POSE_API_KEY")
    emulator = None
    if key:
        conn = {"conn_type": "kakao_pose", "password": key, "extra": {"rate_limit_per_second": 5}}
        print("Using the real Kakao Pose API (KAKAO_POSE_API_KEY is set)")
    else:
        from airflow_provider_kakaopose.emulator import PoseEmulator

        key = secrets.token_hex(16)
        emulator = PoseEmulator(api_key=key, seed=2026, job_waiting_s=0.5, job_processing_s=2.0).start()
        conn = {"conn_type": "kakao_pose", "host": emulator.base_url, "password": key}
        print(f"Started the Pose API emulator at {emulator.base_url} (no key, no network needed)")
    env = airflow_env(conn)
    try:
        failed = run_dags(DAG_IDS, env, HOME)
    finally:
        if emulator is not None:
            emulator.stop()
    if failed is None:
        return 1
    found = sorted(glob.glob(str(OUTPUT / "**" / "*.parquet"), recursive=True))
    files = [f for f in found if "/_kakaopose/" not in f]  # the sidecar folder is not the dataset
    errors = [f for f in found if f.endswith(".errors.parquet")]
    print(f"\nParquet landed under {OUTPUT}:")
    if files:
        summarize(files)
    if errors:
        import duckdb

        n_errors = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [errors]).fetchall()[0][0]
        print(f"  errors tables: {len(errors)}, {n_errors} failed input(s)")
    pngs = sorted(glob.glob(str(OUTPUT / "**" / "*.png"), recursive=True))
    if pngs:
        import duckdb

        sidecars, name = os.path.split(pngs[0])  # pictures live in the table's _kakaopose/ folder
        video = os.path.join(os.path.dirname(sidecars), name[: -len(".png")] + ".parquet")
        sql = (
            "SELECT track_id, count(DISTINCT frame_num) AS frames, round(avg(score), 3) AS mean_score "
            f"FROM read_parquet('{video}') GROUP BY track_id ORDER BY track_id"
        )
        print(f"\nPoses drawn (contact sheet of the video example): {pngs[0]}")
        print(f"DuckDB> {sql}")
        for track, frames, score in duckdb.sql(sql).fetchall():
            print(f"  track {track}: {frames} frames, mean score {score}")
    return 1 if failed or not files or not pngs else 0


if __name__ == "__main__":
    sys.exit(main())
