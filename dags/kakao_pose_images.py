"""(a) Images → Parquet: detect poses in a list of images and land one keypoints table per run."""

from __future__ import annotations

from _common import EXAMPLE_DAG_ARGS, IMAGES, OUTPUT_ROOT, RUN_DIR
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

with DAG(dag_id="kakao_pose_images", **EXAMPLE_DAG_ARGS) as dag:
    KakaoPoseImageOperator(
        task_id="analyze_images",
        images=IMAGES,
        output_uri=f"{OUTPUT_ROOT}/{RUN_DIR}/keypoints.parquet",
    )
