"""The cluster benchmark's DAG (benchmarks/cluster.py, tests/test_cluster.py): deferrable video tasks and image
batches, all dynamically mapped, in one run, on one shared API quota.

Its size comes from ``cluster_bench.json`` beside this file (written by the benchmark before the cluster
starts): ``{"videos": N, "images": M, "batch": B, "output": DIR, "poll_interval": S, "job_processing_s": S}``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.common.compat.sdk import DAG

from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator, KakaoPoseVideoOperator

CONFIG = json.loads((Path(__file__).parent / "cluster_bench.json").read_text())
OUT = CONFIG["output"].rstrip("/")
RUN = "{{ run_id | replace(':', '_') | replace('+', '_') }}"
VIDEO = "https://example.com/bench/v{n:03d}.mp4?frames={frames}&persons=2&waiting_s=1&processing_s={processing}"
RETRIES = {"retries": 3, "retry_delay": timedelta(seconds=3)}

with DAG(
    dag_id="kakao_pose_cluster_bench",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=256,
    tags=["kakao-pose", "benchmark"],
) as dag:
    # Submitting takes a worker slot for a moment, then the wait is deferred: let submissions go before the
    # image batches (which hold their slots for minutes), so every job's processing starts early.
    KakaoPoseVideoOperator.partial(
        task_id="videos",
        deferrable=True,
        poll_interval=CONFIG["poll_interval"],
        timeout=3600,
        priority_weight=10,
        **RETRIES,
    ).expand_kwargs(
        [
            {
                "video": VIDEO.format(n=n, frames=CONFIG.get("frames", 30), processing=CONFIG["job_processing_s"]),
                "output_uri": f"{OUT}/{RUN}/videos/v{n:03d}.parquet",
            }
            for n in range(CONFIG["videos"])
        ]
    )
    batches = [
        list(range(start, min(start + CONFIG["batch"], CONFIG["images"])))
        for start in range(0, CONFIG["images"], CONFIG["batch"])
    ]
    KakaoPoseImageOperator.partial(task_id="images", max_concurrency=8, max_failed_ratio=1.0, **RETRIES).expand_kwargs(
        [
            {
                "images": [f"https://example.com/bench/img{i:05d}.jpg" for i in batch],
                "output_uri": f"{OUT}/{RUN}/images/b{b:03d}.parquet",
            }
            for b, batch in enumerate(batches)
        ]
    )
