"""Every example DAG end to end with Airflow's own ``dag.test()`` against the emulator."""

from __future__ import annotations

import importlib
import json
import sys

import duckdb
import pytest
from conftest import API_KEY, DAGS

DAG_IDS = [
    "kakao_pose_images",
    "kakao_pose_video",
    "kakao_pose_video_sensor",
    "kakao_pose_videos_mapped",
    "kakao_pose_asset_consumer",
]
VIDEOS = "https://example.com/a.mp4?frames=12&persons=2,https://example.com/b.mp4?frames=7&persons=1"


@pytest.fixture
def run_example(airflow_db, emulator, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAKAO_POSE_DEFAULT",
        json.dumps({"conn_type": "kakao_pose", "host": emulator.base_url, "password": API_KEY}),
    )
    monkeypatch.setenv("KAKAO_POSE_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("KAKAO_POSE_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("KAKAO_POSE_DEMO_VIDEOS", VIDEOS)

    def run(dag_id: str):
        for name in ("_common", dag_id):  # re-read the environment
            sys.modules.pop(name, None)
        dag = importlib.import_module(dag_id).dag
        dag_run = dag.test()
        files = sorted(str(p) for p in (tmp_path / "out").rglob("*.parquet") if not p.name.endswith(".errors.parquet"))
        return dag_run, files

    return run


def query(sql: str, files: list[str]) -> list[tuple]:
    return duckdb.connect().execute(sql.replace("FILES", "read_parquet(?)"), [files]).fetchall()


def test_every_example_dag_is_importable_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(DAG_IDS) <= set(bag.dag_ids)


def test_images_dag(run_example, emulator):
    dag_run, files = run_example("kakao_pose_images")
    assert dag_run.state == "success"
    [path] = files
    assert "/kakao_pose_images/" in path
    assert duckdb.connect().execute(
        "SELECT count(*) FROM read_parquet(?)", [path.replace(".parquet", ".errors.parquet")]
    ).fetchall() == [(0,)]
    [(rows, sources, persons, bad_ids)] = query(
        "SELECT count(*), count(DISTINCT source), count(*) FILTER (WHERE keypoint_id = 1),"
        " count(*) FILTER (WHERE keypoint_id NOT BETWEEN 1 AND 17) FROM FILES",
        files,
    )
    assert emulator.count(method="POST", path="/pose") == 3
    assert rows == 17 * persons and persons > 0 and bad_ids == 0
    assert 1 <= sources <= 3


def test_video_dag_defers_and_writes(run_example, emulator):
    dag_run, files = run_example("kakao_pose_video")
    assert dag_run.state == "success"
    assert len(files) == 1
    [(rows, frames, persons, jobs)] = query(
        "SELECT count(*), count(DISTINCT frame_num), max(person_idx) + 1, count(DISTINCT job_id) FROM FILES", files
    )
    assert emulator.count(method="POST", path="/pose/job") == 1
    assert jobs == 1 and persons == 2 and 1 <= frames <= 12
    assert rows == 17 * query("SELECT count(*) FROM FILES WHERE keypoint_id = 1", files)[0][0]


def test_sensor_dag(run_example, emulator):
    dag_run, files = run_example("kakao_pose_video_sensor")
    assert dag_run.state == "success"
    assert emulator.count(method="POST", path="/pose/job") == 1
    [(source, frames)] = query("SELECT DISTINCT source, max(frame_num) + 1 FROM FILES GROUP BY source", files)
    assert source == VIDEOS.split(",")[0] and frames <= 12


def test_mapped_videos_dag(run_example, emulator):
    dag_run, files = run_example("kakao_pose_videos_mapped")
    assert dag_run.state == "success"
    assert [p.rsplit("/", 1)[1] for p in files] == ["video_000.parquet", "video_001.parquet"]
    assert emulator.count(method="POST", path="/pose/job") == 2
    persons = [query("SELECT max(person_idx) + 1 FROM FILES", [f])[0][0] for f in files]
    assert persons == [2, 1]


def test_no_key_anywhere_after_running_every_example(run_example, airflow_db, tmp_path):
    """Canary key: run every example DAG, then search the metadata DB (XCom, trigger kwargs, rendered
    fields, task instances, logs), every file under AIRFLOW_HOME and every Parquet file for it.

    Captured stdout/stderr/logs of this test are searched by the conftest guard as well.
    """
    from pathlib import Path

    from airflow.models.trigger import Trigger
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    for dag_id in DAG_IDS:
        dag_run, _ = run_example(dag_id)
        assert dag_run.state == "success"
    key = API_KEY.encode()
    with create_session() as session:
        triggers = session.query(Trigger).all()
        xcoms = session.query(XComModel).all()
        assert triggers, "the deferrable examples should have stored triggers"
        assert xcoms, "the examples should have pushed XComs"
        for trigger in triggers:
            assert trigger.classpath.endswith("KakaoPoseJobTrigger")
            assert set(trigger.kwargs) == {"job_id", "kakao_pose_conn_id", "poll_interval", "end_time"}
            assert API_KEY not in repr(trigger.kwargs) and API_KEY not in str(trigger.encrypted_kwargs)
        for xcom in xcoms:
            assert API_KEY not in repr(xcom.value)
    searched = 0
    for root in (Path(airflow_db), tmp_path / "out"):
        for path in root.rglob("*"):
            if path.is_file():
                searched += 1
                assert key not in path.read_bytes(), f"the key is in {path}"
    assert searched >= 6  # at least the SQLite DB and the Parquet files were searched


def test_asset_consumer_queries_what_the_video_dag_landed(run_example):
    dag_run, _ = run_example("kakao_pose_video")
    assert dag_run.state == "success"
    dag_run, _ = run_example("kakao_pose_asset_consumer")
    assert dag_run.state == "success"
    [ti] = dag_run.get_task_instances()
    rows = ti.xcom_pull(task_ids="people_per_second")
    assert rows and rows[0]["second"] == 0 and rows[0]["people_per_frame"] == 2.0


def test_video_dag_declares_the_asset_the_consumer_waits_for(run_example):
    for name in ("_common", "kakao_pose_video", "kakao_pose_asset_consumer"):
        sys.modules.pop(name, None)
    producer = importlib.import_module("kakao_pose_video").dag
    consumer = importlib.import_module("kakao_pose_asset_consumer").dag
    [outlet] = producer.get_task("analyze_video").outlets
    assert list(consumer.timetable.asset_condition.objects) == [outlet]


def links_of(dag_run) -> dict[str, str]:
    """The "Pose job result" link each task of a finished run pushed (Airflow 3 stores links as XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dag_run.dag_id,
            XComModel.run_id == dag_run.run_id,
            XComModel.key == "_link_KakaoPoseJobLink",
        )
        return {row.task_id: _decoded(row.value) for row in rows}


def _decoded(value):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def test_job_link_survives_a_deferral_without_output_and_a_failed_job(run_example, emulator):
    """The link is built from the stored job id, so a task resumed after deferring keeps it even when it
    writes no table (``output_uri=None``) or its job failed (it used to push an empty link over it)."""
    emulator.configure(job_waiting_s=1.0)  # both jobs are still waiting when their tasks defer
    dag_run, _ = run_example("kakao_pose_test_links")
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"no_output": "success", "failed_job": "failed"}
    links = links_of(dag_run)
    assert set(links) == {"no_output", "failed_job"}
    for task_id, link in links.items():
        assert link.startswith(f"{emulator.base_url}/pose/job/"), (task_id, link)
    assert links["no_output"] != links["failed_job"]
    assert emulator.count(method="POST", path="/pose/job") == 2
