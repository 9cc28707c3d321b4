"""Test-only DAG (its own DAG bundle, see conftest): deferred video tasks that end without a table — no output
wanted, or a job that failed after the deferral — with their connection id templated from the DAG's params."""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

POLL = float(os.environ.get("KAKAO_POSE_POLL_INTERVAL", "0.3"))
OUT = os.environ.get("KAKAO_POSE_OUTPUT", "/tmp/kakao_pose_output")

with DAG(
    dag_id="kakao_pose_test_deferred",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"pose_conn": "kakao_pose_templated"},  # a connection only the rendered id names
) as dag:
    KakaoPoseVideoOperator(
        task_id="no_output",
        video="https://example.com/a.mp4?frames=5",
        deferrable=True,
        poll_interval=POLL,
        kakao_pose_conn_id="{{ params.pose_conn }}",
    )
    KakaoPoseVideoOperator(
        task_id="failed_job",
        video="https://unreachable.example.com/v.mp4",
        output_uri=f"{OUT}/kakao_pose_test_deferred/never.parquet",
        deferrable=True,
        poll_interval=POLL,
        retries=0,
        kakao_pose_conn_id="{{ params.pose_conn }}",
    )
