"""(b) One video, all in one deferrable task: submit, wait in the triggerer, write the keypoints table."""

from __future__ import annotations

from _common import EXAMPLE_DAG_ARGS, OUTPUT_ROOT, POLL_INTERVAL, POSE_VIDEO_ASSET_URI, RUN_DIR, VIDEOS
from airflow.providers.common.compat.sdk import DAG, Asset

from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

with DAG(dag_id="kakao_pose_video", **EXAMPLE_DAG_ARGS) as dag:
    KakaoPoseVideoOperator(
        task_id="analyze_video",
        video=VIDEOS[0],
        output_uri=f"{OUTPUT_ROOT}/{RUN_DIR}/keypoints.parquet",
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=1800,
        retries=2,
        pictures=True,  # a PNG contact sheet and a GIF of the poses next to the Parquet
        outlets=[Asset(POSE_VIDEO_ASSET_URI)],  # downstream: kakao_pose_asset_consumer
    )
