"""OpenLineage facets (with the OpenLineage provider installed, and without it); the job link is gone."""

from __future__ import annotations

import subprocess
import sys

from helpers import VIDEO_URL, context, video_operator

from airflow_provider_kakaopose.operators.pose import (
    KakaoPoseImageOperator,
    KakaoPoseVideoOperator,
)
from airflow_provider_kakaopose.tables import COLUMNS, ERROR_COLUMNS


def test_image_operator_reports_inputs_and_outputs_with_schema(emulator, make_conn, tmp_path):
    out = tmp_path / "k.parquet"
    images = ["https://example.com/a.jpg", str(tmp_path / "missing.png")]
    op = KakaoPoseImageOperator(
        task_id="i", images=images, output_uri=str(out), max_failed_ratio=1, kakao_pose_conn_id=make_conn()
    )
    op.execute(context())
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        ("https://example.com", "a.jpg"),
        ("file", str(tmp_path / "missing.png")),
    ]
    keypoints, errors = lineage.outputs
    assert (keypoints.namespace, keypoints.name) == ("file", str(out))
    assert [f.name for f in keypoints.facets["schema"].fields] == list(COLUMNS)
    assert [f.name for f in errors.facets["schema"].fields] == list(ERROR_COLUMNS)
    assert errors.name == str(tmp_path / "_kakaopose" / "k.errors.parquet")


def test_video_operator_lineage(emulator, make_conn, tmp_path):
    out = tmp_path / "v.parquet"
    op = video_operator(make_conn(), str(out))
    op.execute(context())
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("https://example.com", "walk.mp4")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(out))]


def test_no_operator_has_the_job_link_and_dags_serialized_with_it_still_load(caplog):
    """The "Pose job result" link opened ``GET /pose/job/{id}``, which answers 401 without the key: it is gone
    (no class, no registration, no ``job_url`` XCom). A DAG serialized by an earlier release still names it:
    Airflow 3 turns it into a plain XCom link (old runs keep the URL they stored, new ones have none); Airflow
    2.11 drops it, logging that the class is not registered, until the DAG file is parsed again."""
    import logging

    import pendulum

    import airflow_provider_kakaopose.operators.pose as pose_module
    from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS, DAG
    from airflow_provider_kakaopose.get_provider_info import get_provider_info
    from airflow_provider_kakaopose.operators.pose import KakaoPoseJobToParquetOperator
    from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor

    assert "extra-links" not in get_provider_info()
    assert not hasattr(pose_module, "KakaoPoseJobLink")
    for cls in (KakaoPoseImageOperator, KakaoPoseVideoOperator, KakaoPoseJobToParquetOperator, KakaoPoseJobSensor):
        assert not cls.operator_extra_links, cls.__name__
    try:
        from airflow.serialization.serialized_objects import DagSerialization as serializer
    except ImportError:  # Airflow 2
        from airflow.serialization.serialized_objects import SerializedDAG as serializer
    with DAG("old_link", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL)
    data = serializer.to_dict(dag)
    task = data["dag"]["tasks"][0]
    task = task.get("__var", task)
    assert "_operator_extra_links" not in task
    # What releases up to 0.2 serialized for each video and load task, in each version's format:
    if AIRFLOW_V_3_0_PLUS:
        task["_operator_extra_links"] = {"Pose job result": "_link_KakaoPoseJobLink"}
    else:
        task["_operator_extra_links"] = [{"airflow_provider_kakaopose.operators.pose.KakaoPoseJobLink": {}}]
    caplog.set_level(logging.INFO)
    links = serializer.from_dict(data).get_task("v").operator_extra_links
    if AIRFLOW_V_3_0_PLUS:
        assert [(type(link).__name__, link.name) for link in links] == [("XComOperatorLink", "Pose job result")]
    else:
        assert list(links) == []
        assert any("KakaoPoseJobLink' not registered" in r.getMessage() for r in caplog.records)


def test_storage_uri_namespaces():
    from airflow_provider_kakaopose.operators._lineage import ol_dataset

    assert (ol_dataset("s3://aws_default@bucket/pose/k.parquet").namespace, ol_dataset("s3://b/x").name) == (
        "s3://bucket",
        "x",
    )
    assert ol_dataset("gs://bucket/a/b.parquet").namespace == "gs://bucket"


def test_everything_works_without_openlineage(tmp_path):
    """With the OpenLineage client and the provider's extractors unimportable (as when the provider is not
    installed), importing the operators and running a real batch still work."""
    code = f"""
import json, os, sys
for name in ("openlineage", "openlineage.client", "airflow.providers.openlineage.extractors"):
    sys.modules[name] = None
os.environ["AIRFLOW_HOME"] = {str(tmp_path)!r}
from airflow_provider_kakaopose.emulator import PoseEmulator
from airflow_provider_kakaopose.operators.pose import KakaoPoseImageOperator
with PoseEmulator(api_key="k-lineage") as emu:
    os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(
        {{"conn_type": "kakao_pose", "host": emu.base_url, "password": "k-lineage"}})
    out = {str(tmp_path / "o.parquet")!r}
    op = KakaoPoseImageOperator(task_id="i", images=["https://example.com/a.jpg"], output_uri=out)
    print(json.dumps(op.execute({{"ti": None}})))
assert "openlineage.client" not in sys.modules or sys.modules["openlineage.client"] is None
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"images": 1' in result.stdout.strip().splitlines()[-1]
    assert (tmp_path / "o.parquet").exists()


OL_SCRIPT = """
import json, os, sys
from airflow_provider_kakaopose.emulator import PoseEmulator
from airflow.utils.db import initdb

with PoseEmulator(api_key=os.environ["KEY"], seed=1, job_waiting_s=0.2, job_processing_s=0.3) as emu:
    os.environ["AIRFLOW_CONN_KAKAO_POSE_DEFAULT"] = json.dumps(
        {"conn_type": "kakao_pose", "host": emu.base_url, "password": os.environ["KEY"]}
    )
    initdb()
    sys.path.insert(0, os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    sys.path.insert(0, os.environ["KAKAO_POSE_TESTS"])
    import kakao_pose_images, kakao_pose_video
    from airflow_versions import prepare_dag_test
    for dag in (kakao_pose_images.dag, kakao_pose_video.dag):
        prepare_dag_test(dag)
        assert dag.test().state == "success", dag.dag_id
"""


def test_openlineage_events_reach_a_real_transport(tmp_path):
    """The OpenLineage provider's own listener, configured with a file transport, under ``dag.test()``."""
    import json
    import os

    from helpers import API_KEY, DAGS

    events_file = tmp_path / "events.jsonl"
    (tmp_path / "home").mkdir()  # Airflow 3.0 does not create AIRFLOW_HOME for its SQLite file
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "pose-test",
        "KAKAO_POSE_OUTPUT": str(tmp_path / "out"),
        "KAKAO_POSE_POLL_INTERVAL": "0.2",
        "KAKAO_POSE_DEMO_VIDEOS": "https://example.com/walk.mp4?frames=5",
        "KEY": API_KEY,
        "KAKAO_POSE_TESTS": os.path.dirname(__file__),
    }
    done = subprocess.run([sys.executable, "-c", OL_SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    text = events_file.read_text()
    assert API_KEY not in text
    complete = {
        e["job"]["name"]: e
        for e in map(json.loads, text.splitlines())
        if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]
    }
    images = complete["kakao_pose_images.analyze_images"]
    assert [d["namespace"] for d in images["inputs"]] == ["https://example.com"] * 3
    keypoints, errors = images["outputs"]
    assert keypoints["name"].endswith("keypoints.parquet") and errors["name"].endswith("keypoints.errors.parquet")
    assert [f["name"] for f in keypoints["facets"]["schema"]["fields"]] == list(COLUMNS)
    video = complete["kakao_pose_video.analyze_video"]
    assert [(d["namespace"], d["name"]) for d in video["inputs"]] == [("https://example.com", "walk.mp4")]
    assert [d["name"] for d in video["outputs"]] == [
        str(next((tmp_path / "out").rglob("kakao_pose_video/*/keypoints.parquet")))
    ]
