"""(d) Many videos with dynamic task mapping: one deferrable task per video, one Parquet file each."""

from __future__ import annotations

from _common import EXAMPLE_DAG_ARGS, OUTPUT_ROOT, POLL_INTERVAL, RUN_DIR, VIDEOS
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

with DAG(dag_id="kakao_pose_videos_mapped", **EXAMPLE_DAG_ARGS) as dag:
    KakaoPoseVideoOperator.partial(
        task_id="analyze_videos",
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=1800,
        retries=2,
    ).expand_kwargs(
        [
            {"video": video, "output_uri": f"{OUTPUT_ROOT}/{RUN_DIR}/video_{n:03d}.parquet"}
            for n, video in enumerate(VIDEOS)
        ]
    )
