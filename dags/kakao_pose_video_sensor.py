"""(c) Submit → wait with a deferrable sensor → load: three tasks, each retryable on its own."""

from __future__ import annotations

import pendulum
from _common import OUTPUT_ROOT, POLL_INTERVAL, RUN_DIR, VIDEOS
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseJobToParquetOperator, KakaoPoseVideoOperator
from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor

with DAG(
    dag_id="kakao_pose_video_sensor",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kakao-pose", "example"],
) as dag:
    submit = KakaoPoseVideoOperator(task_id="submit", video=VIDEOS[0], wait_for_completion=False)
    wait = KakaoPoseJobSensor(
        task_id="wait",
        job_id="{{ ti.xcom_pull(task_ids='submit') }}",
        deferrable=True,
        poke_interval=POLL_INTERVAL,
        timeout=1800,
    )
    load = KakaoPoseJobToParquetOperator(
        task_id="load",
        job_id="{{ ti.xcom_pull(task_ids='submit') }}",
        source=VIDEOS[0],
        output_uri=f"{OUTPUT_ROOT}/{RUN_DIR}/keypoints.parquet",
    )
    submit >> wait >> load
