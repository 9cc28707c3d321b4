"""Test-only DAG (its own DAG bundle, see conftest): a list from an upstream task handed to the image operator
the three ways — rendered to text by a Jinja template (``"{{ ti.xcom_pull(...) }}"``, the DAG renders strings),
as the task's output itself (an XComArg), and through a template in a DAG that renders native objects."""

from __future__ import annotations

import os

import pendulum
from airflow.providers.common.compat.sdk import DAG, task

from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator

OUT = os.environ.get("KAKAO_POSE_OUTPUT", "/tmp/kakao_pose_test_rendered_list").rstrip("/")
#: Commas and quotes inside the URLs: the text of the list must be read as a list, not split on commas.
URLS = [
    "https://example.com/a.jpg",
    "https://example.com/b,c.jpg?size=640,480",
    "https://example.com/it's.jpg",
]

with DAG(
    dag_id="kakao_pose_test_rendered_list",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
) as dag:

    @task
    def read_urls() -> list[str]:
        return URLS

    urls = read_urls()
    rendered = KakaoPoseImageOperator(
        task_id="rendered",
        images="{{ ti.xcom_pull(task_ids='read_urls') }}",  # renders to the text "['https://…', …]"
        output_uri=f"{OUT}/rendered.parquet",
    )
    passed = KakaoPoseImageOperator(task_id="passed", images=urls, output_uri=f"{OUT}/passed.parquet")
    urls >> rendered

with DAG(
    dag_id="kakao_pose_test_rendered_list_native",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
) as native_dag:

    @task(task_id="read_urls")
    def read_native() -> list[str]:
        return URLS

    read_native() >> KakaoPoseImageOperator(
        task_id="native",
        images="{{ ti.xcom_pull(task_ids='read_urls') }}",  # renders to the list itself
        output_uri=f"{OUT}/native.parquet",
    )
