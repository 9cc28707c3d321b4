"""(e) Scheduled on the pose Asset: whenever the video example lands a table, query all of them with DuckDB."""

from __future__ import annotations

import pendulum
from _common import OUTPUT_ROOT, POSE_VIDEO_ASSET_URI
from airflow.providers.common.compat.sdk import DAG, Asset, task

with DAG(
    dag_id="kakao_pose_asset_consumer",
    schedule=[Asset(POSE_VIDEO_ASSET_URI)],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kakao-pose", "example"],
) as dag:

    @task
    def people_per_second() -> list[dict]:
        """People seen per second of video, over every table the video example has landed so far."""
        import duckdb

        rows = duckdb.sql(
            f"""
            SELECT floor(time_s)::INT AS second,
                   count(DISTINCT (frame_num, person_idx)) / count(DISTINCT frame_num) AS people_per_frame,
                   round(avg(score), 3) AS mean_score
            FROM read_parquet('{OUTPUT_ROOT}/kakao_pose_video/*/keypoints.parquet')
            GROUP BY second ORDER BY second
            """
        ).fetchall()
        result = [{"second": s, "people_per_frame": float(p), "mean_score": float(m)} for s, p, m in rows]
        for row in result:
            print(row)
        return result

    people_per_second()
