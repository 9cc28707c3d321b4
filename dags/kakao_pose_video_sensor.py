"""(c) Submit → wait with a deferrable sensor → load: three tasks, each retryable on its own."""

from __future__ import annotations

from _common import EXAMPLE_DAG_ARGS, OUTPUT_ROOT, POLL_INTERVAL, RUN_DIR, VIDEOS
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseJobToParquetOperator, KakaoPoseVideoOperator
from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor

with DAG(dag_id="kakao_pose_video_sensor", **EXAMPLE_DAG_ARGS) as dag:
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
