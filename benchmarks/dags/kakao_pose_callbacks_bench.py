"""The callback benchmark's DAG (benchmarks/callbacks.py --cluster): N deferrable video tasks whose jobs end at
spread times, each writing its table. Its size comes from ``callbacks_bench.json`` beside this file:
``{"videos": N, "output": DIR, "durations": [s, ...], "poll_interval": S}``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

CONFIG = json.loads((Path(__file__).parent / "callbacks_bench.json").read_text())
OUT = CONFIG["output"].rstrip("/")
RUN = "{{ run_id | replace(':', '_') | replace('+', '_') }}"
VIDEO = "https://example.com/cb/v{n:03d}.mp4?frames=10&persons=1&waiting_s=0&processing_s={processing:.1f}"

with DAG(
    dag_id="kakao_pose_callbacks_bench",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=256,
    tags=["kakao-pose", "benchmark"],
) as dag:
    KakaoPoseVideoOperator.partial(
        task_id="videos",
        deferrable=True,
        poll_interval=CONFIG["poll_interval"],
        timeout=3600,
        retries=3,
        retry_delay=timedelta(seconds=3),
    ).expand_kwargs(
        [
            {"video": VIDEO.format(n=n, processing=d), "output_uri": f"{OUT}/{RUN}/v{n:03d}.parquet"}
            for n, d in enumerate(CONFIG["durations"])
        ]
    )
