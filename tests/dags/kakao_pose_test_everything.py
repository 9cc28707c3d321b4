"""Test-only DAG (own DAG bundle, see conftest): every public operator and the sensor in one run, on whatever
Airflow runs the tests — mapped image batches, an ObjectStoragePath output, mapped deferrable videos, submit →
sensor in its three modes → load with an Asset outlet, and two video tasks whose first try fails after the job
was submitted (one with a table, one without), so the retry must re-attach instead of submitting again."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.common.compat.sdk import DAG, Asset, ObjectStoragePath

from airflow_provider_kakaopose.operators.pose import (
    KakaoPoseImageOperator,
    KakaoPoseJobToParquetOperator,
    KakaoPoseVideoOperator,
)
from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor

OUT = os.environ.get("KAKAO_POSE_OUTPUT", "/tmp/kakao_pose_test_everything").rstrip("/")
POLL = float(os.environ.get("KAKAO_POSE_POLL_INTERVAL", "0.3"))
RUN = "{{ ds_nodash }}"
JOB = "{{ ti.xcom_pull(task_ids='submit') }}"


class FirstTryFailsAfterTheJob(KakaoPoseVideoOperator):
    """Fails its first try once the job is known — after the deferral when it defers, right after the
    submission (recorded) otherwise — the way a worker lost at that point would."""

    def execute(self, context):
        self._first_try = context["ti"].try_number == 1
        return super().execute(context)

    def _submit(self, store, hook, record):
        job = super()._submit(store, hook, record)
        if self._first_try and not self.wait_for_completion:
            raise RuntimeError("simulated loss of the worker right after the submission")
        return job

    def execute_complete(self, context, event):
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated loss of the worker after the deferral")
        return super().execute_complete(context, event)


with DAG(
    dag_id="kakao_pose_test_everything",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:
    KakaoPoseImageOperator.partial(task_id="images", max_concurrency=4).expand_kwargs(
        [
            {
                "images": [f"https://example.com/batch{b}/{n}.jpg" for n in range(3)],
                "output_uri": f"{OUT}/{RUN}/images_{b}.parquet",
            }
            for b in range(2)
        ]
    )
    KakaoPoseImageOperator(
        task_id="images_to_object_storage",
        images="https://example.com/one.jpg",
        output_uri=ObjectStoragePath(f"file://{OUT}/osp/images.parquet"),
    )
    KakaoPoseVideoOperator.partial(task_id="videos", deferrable=True, poll_interval=POLL).expand_kwargs(
        [
            {
                "video": f"https://example.com/mapped{n}.mp4?frames=6&persons=2",
                "output_uri": f"{OUT}/{RUN}/v{n}.parquet",
            }
            for n in range(2)
        ]
    )
    submit = KakaoPoseVideoOperator(
        task_id="submit", video="https://example.com/sensed.mp4?frames=5", wait_for_completion=False
    )
    sensors = [
        KakaoPoseJobSensor(task_id=f"wait_{mode}", job_id=JOB, mode=mode, deferrable=False, poke_interval=0.2)
        for mode in ("poke", "reschedule")
    ]
    sensors.append(KakaoPoseJobSensor(task_id="wait_deferrable", job_id=JOB, deferrable=True, poke_interval=POLL))
    load = KakaoPoseJobToParquetOperator(
        task_id="load",
        job_id=JOB,
        source="https://example.com/sensed.mp4?frames=5",
        output_uri=Asset(f"file://{OUT}/{RUN}/sensed.parquet"),
    )
    submit >> sensors >> load
    FirstTryFailsAfterTheJob(
        task_id="retried_with_table",
        video="https://example.com/retried.mp4?frames=5",
        output_uri=f"{OUT}/{RUN}/retried.parquet",
        deferrable=True,
        poll_interval=POLL,
        retries=1,
        retry_delay=timedelta(0),
    )
    FirstTryFailsAfterTheJob(
        task_id="retried_without_output",
        video="https://example.com/retried-no-output.mp4?frames=5",
        wait_for_completion=False,
        retries=1,
        retry_delay=timedelta(0),
    )
