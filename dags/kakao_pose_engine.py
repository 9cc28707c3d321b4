"""(f) Real poses with no key and no network: photos and a video through the local pose engine.

Point the ``kakao_pose_engine`` connection at ``make engine`` (MediaPipe BlazePose behind the same API); the
operators are the same as against the real service. ``make demo-engine`` starts the engine, writes the sample
photos and video and runs this DAG.
"""

from __future__ import annotations

import pendulum
from _common import ENGINE_CONN_ID, ENGINE_SAMPLES, OUTPUT_ROOT, POLL_INTERVAL, RUN_DIR
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator, KakaoPoseVideoOperator

with DAG(
    dag_id="kakao_pose_engine",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["kakao-pose", "example", "engine"],
) as dag:
    KakaoPoseImageOperator(
        task_id="analyze_photos",
        images=[f"{ENGINE_SAMPLES}/astronaut.png", f"{ENGINE_SAMPLES}/camera.png"],  # uploaded as files
        output_uri=f"{OUTPUT_ROOT}/{RUN_DIR}/photos.parquet",
        pictures=True,  # photos.png: the skeletons drawn over the photos
        kakao_pose_conn_id=ENGINE_CONN_ID,
    )
    KakaoPoseVideoOperator(
        task_id="analyze_video",
        video=f"{ENGINE_SAMPLES}/astronaut_slide.mp4",
        output_uri=f"{OUTPUT_ROOT}/{RUN_DIR}/video.parquet",
        deferrable=True,  # waits in the triggerer while the engine works through the frames
        poll_interval=POLL_INTERVAL,
        timeout=1800,
        pictures=True,
        kakao_pose_conn_id=ENGINE_CONN_ID,
    )
