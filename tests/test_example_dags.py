"""Every example DAG end to end with Airflow's own ``dag.test()`` against the emulator."""

from __future__ import annotations

import importlib
import json
import sys

import duckdb
import pytest
from airflow_versions import asset_condition_objects, dag_bag, prepare_dag_test, xcom_rows
from helpers import API_KEY, DAGS, use_emulator_as_default_conn

from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS

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
    use_emulator_as_default_conn(monkeypatch, emulator)
    monkeypatch.setenv("KAKAO_POSE_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("KAKAO_POSE_POLL_INTERVAL", "0.3")
    monkeypatch.setenv("KAKAO_POSE_DEMO_VIDEOS", VIDEOS)

    def run(dag_id: str):
        for name in ("_common", dag_id):  # re-read the environment
            sys.modules.pop(name, None)
        dag = importlib.import_module(dag_id).dag
        prepare_dag_test(dag)
        dag_run = dag.test()
        files = sorted(str(p) for p in (tmp_path / "out").rglob("*.parquet") if "/_kakaopose/" not in str(p))
        return dag_run, files

    return run


def query(sql: str, files: list[str]) -> list[tuple]:
    return duckdb.connect().execute(sql.replace("FILES", "read_parquet(?)"), [files]).fetchall()


def test_every_example_dag_is_importable_without_errors():
    bag = dag_bag(str(DAGS))
    assert bag.import_errors == {}
    assert set(DAG_IDS) <= set(bag.dag_ids)


def test_images_dag(run_example, emulator):
    dag_run, files = run_example("kakao_pose_images")
    assert dag_run.state == "success"
    [path] = files
    assert "/kakao_pose_images/" in path
    folder, name = path.rsplit("/", 1)
    errors = f"{folder}/_kakaopose/{name.replace('.parquet', '.errors.parquet')}"
    assert duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [errors]).fetchall() == [(0,)]
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
    from airflow.utils.session import create_session

    for dag_id in DAG_IDS:
        dag_run, _ = run_example(dag_id)
        assert dag_run.state == "success"
    key = API_KEY.encode()
    with create_session() as session:
        triggers = session.query(Trigger).all()
        xcoms = xcom_rows(session)
        # Airflow 2.11's dag.test() runs a deferred task's trigger in line without storing it: the stored
        # row (and its kwargs) are checked there by the real-deployment test (test_deployment.py).
        assert triggers or not AIRFLOW_V_3_0_PLUS, "the deferrable examples should have stored triggers"
        assert xcoms, "the examples should have pushed XComs"
        for trigger in triggers:
            assert trigger.classpath.endswith("KakaoPoseJobTrigger")
            assert set(trigger.kwargs) == {
                *("job_id", "kakao_pose_conn_id", "poll_interval", "end_time"),
                *("callback", "callback_poll_interval", "callback_nonce", "waiting_since"),  # ids and settings
            }
            assert API_KEY not in repr(trigger.kwargs) and API_KEY not in str(trigger.encrypted_kwargs)
        for _, _, value in xcoms:
            assert API_KEY not in repr(value)
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
    assert asset_condition_objects(consumer) == [outlet]


def test_deferred_tasks_return_their_job_id_store_no_link_and_render_their_connection(
    run_example, emulator, monkeypatch
):
    """Deferred video tasks that end without a table (``output_uri=None``, or a job that failed after the
    deferral) keep their job id (the ``job_id`` XCom, and the return value of the one that succeeded: a str,
    as when it writes a table); no task stores a "Pose job result" link any more (it opened the raw API URL,
    401 without the key); and ``kakao_pose_conn_id="{{ params.pose_conn }}"`` is rendered before the worker
    and the trigger use it (the connection exists only under the rendered name)."""
    from airflow.utils.session import create_session

    conn = {"conn_type": "kakao_pose", "host": emulator.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_TEMPLATED", json.dumps(conn))
    emulator.configure(job_waiting_s=1.0)  # both jobs are still waiting when their tasks defer
    from airflow.models.trigger import Trigger

    with create_session() as session:
        before = max([t.id for t in session.query(Trigger).all()], default=0)  # the triggers of earlier tests
    dag_run, _ = run_example("kakao_pose_test_deferred")
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"no_output": "success", "failed_job": "failed"}
    with create_session() as session:
        rows = xcom_rows(session, dag_id=dag_run.dag_id, run_id=dag_run.run_id)
        xcom = {(task_id, key): value for task_id, key, value in rows}
        job_ids = {xcom[(task, "job_id")] for task in states}
        assert xcom[("no_output", "return_value")] == xcom[("no_output", "job_id")]
        assert len(job_ids) == 2 and all(isinstance(j, str) for j in job_ids)
        assert not [key for _, key in xcom if key.startswith("_link_") or key == "job_url"], sorted(xcom)
        if AIRFLOW_V_3_0_PLUS:  # 2.11's dag.test() runs the triggers in line without storing them
            mine = [t for t in session.query(Trigger).filter(Trigger.id > before) if t.kwargs.get("job_id") in job_ids]
            assert [t.kwargs["kakao_pose_conn_id"] for t in mine] == ["kakao_pose_templated"] * 2
    assert emulator.count(method="POST", path="/pose/job") == 2


def test_every_operator_and_the_sensor_in_one_dag_and_retries_never_resubmit(run_example, emulator, tmp_path):
    """``kakao_pose_test_everything`` under dag.test() on the Airflow under test: mapped image batches, an
    ObjectStoragePath output, mapped deferrable videos, submit → sensor (poke, reschedule, deferrable) → load
    with an Asset outlet, and two tasks whose first try fails after their job was submitted. Every video is
    submitted exactly once: the retries re-attach through the job record (the task state store on 3.3+; on
    older Airflow a file beside the table, or a Variable for the task without output)."""
    from airflow.models import Variable  # the metadata DB's, readable outside a task on every version

    from airflow_provider_kakaopose._compat import HAS_TASK_STATE_STORE
    from airflow_provider_kakaopose.operators._job_record import variable_key
    from airflow_provider_kakaopose.operators._outputs import run_identity

    dag_run, files = run_example("kakao_pose_test_everything")
    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    assert {key: ti.state for key, ti in tis.items() if ti.state != "success"} == {}
    assert dag_run.state == "success"
    assert tis[("retried_with_table", -1)].try_number == 2
    assert tis[("retried_without_output", -1)].try_number == 2
    posts = [r.fields.get("video_url") for r in emulator.requests if r.method == "POST" and r.path == "/pose/job"]
    assert sorted(posts) == sorted(
        [f"https://example.com/mapped{n}.mp4?frames=6&persons=2" for n in range(2)]
        + [
            "https://example.com/sensed.mp4?frames=5",
            "https://example.com/retried.mp4?frames=5",
            "https://example.com/retried-no-output.mp4?frames=5",
        ]
    )  # one submission per video, retries included
    assert emulator.count(method="POST", path="/pose") == 7
    names = sorted(f.rsplit("/", 1)[1] for f in files)
    tables = ["images_0", "images_1", "images", "v0", "v1", "sensed", "retried"]
    assert names == sorted(f"{name}.parquet" for name in tables)
    records = sorted(p.name for p in (tmp_path / "out").rglob("*.job.json"))
    if HAS_TASK_STATE_STORE:
        assert records == []  # the task state store holds them
    else:  # beside each table a video task wrote (the mapped ones, the load-less ones excluded)
        assert records == ["retried.job.json", "v0.job.json", "v1.job.json"]
        ti = tis[("retried_without_output", -1)]
        context = {"ti": ti}
        assert Variable.get(variable_key(run_identity(context)), None) is None  # deleted once it succeeded
