"""``make demo``: run every example DAG with ``airflow dags test`` and show what landed.

By default it starts the bundled emulator on loopback and a SQLite metadata DB under ``.airflow/demo``
(no key, no network). With ``KAKAO_POSE_API_KEY`` set it uses the real API instead (set
``KAKAO_POSE_DEMO_IMAGES`` / ``KAKAO_POSE_DEMO_VIDEOS`` to real image and video URLs then).
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


def airflow_env(conn: dict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "KAKAO_POSE_OUTPUT": str(OUTPUT),
            "AIRFLOW_CONN_KAKAO_POSE_DEFAULT": json.dumps(conn),
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


def main() -> int:
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
    airflow = str(Path(sys.executable).with_name("airflow"))
    failed = []
    try:
        start = time.monotonic()
        if not run([airflow, "db", "migrate"], env, HOME / "db-migrate.log"):
            print(f"airflow db migrate failed; see {HOME / 'db-migrate.log'}")
            return 1
        print(f"Metadata DB ready (SQLite under {os.path.relpath(HOME, ROOT)}) in {time.monotonic() - start:.1f} s")
        for dag_id in DAG_IDS:
            start = time.monotonic()
            log = HOME / f"{dag_id}.log"
            ok = run([airflow, "dags", "test", dag_id, LOGICAL_DATE], env, log)
            status = "ok" if ok else f"FAILED (log: {os.path.relpath(log, ROOT)})"
            print(f"  airflow dags test {dag_id:<26} {status}  {time.monotonic() - start:5.1f} s")
            if not ok:
                failed.append(dag_id)
    finally:
        if emulator is not None:
            emulator.stop()
    found = sorted(glob.glob(str(OUTPUT / "**" / "*.parquet"), recursive=True))
    files = [f for f in found if not f.endswith(".errors.parquet")]
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

        video = pngs[0][: -len(".png")] + ".parquet"
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
