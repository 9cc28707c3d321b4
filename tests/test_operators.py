"""Operators and the sensor, executed directly against the emulator (no scheduler)."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import VIDEO_URL, FakeStore, FakeTI, context, image_bytes, video_operator

from airflow_provider_kakaopose._compat import AirflowRescheduleException, AirflowSensorTimeout, TaskDeferred
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseInputError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
)
from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
from airflow_provider_kakaopose.operators.pose import (
    JOB_STATE_KEY,
    KakaoPoseImageOperator,
    KakaoPoseJobToParquetOperator,
    KakaoPoseVideoOperator,
)
from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor
from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger


def wait_done(conn_id: str, job_id: str) -> None:
    hook = KakaoPoseHook(conn_id)
    for _ in range(200):
        if hook.get_job(job_id)["status"] not in ("waiting", "processing"):
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------- sensor


def test_sensor_poke_every_status(emulator, make_conn):
    conn_id = make_conn()
    hook = KakaoPoseHook(conn_id)
    job_id = hook.submit_video_job(video_url=VIDEO_URL)
    sensor = KakaoPoseJobSensor(task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id)
    assert sensor.poke({}) is False
    wait_done(conn_id, job_id)
    assert sensor.poke({}) is True
    failed = hook.submit_video_job(video_url="https://x.invalid/v.mp4")
    wait_done(conn_id, failed)
    with pytest.raises(KakaoPoseJobFailedError, match="Failed to get video"):
        KakaoPoseJobSensor(task_id="f", job_id=failed, kakao_pose_conn_id=conn_id).poke({})
    with pytest.raises(KakaoPoseJobNotFoundError, match="not found"):
        KakaoPoseJobSensor(task_id="n", job_id="nope", kakao_pose_conn_id=conn_id).poke({})


def test_sensor_poke_mode_waits_in_the_worker(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=False, poke_interval=0.1, timeout=30
    )
    sensor.execute(context())
    assert KakaoPoseHook(conn_id).get_job(job_id)["status"] == "success"


def test_sensor_poke_mode_times_out(emulator, make_conn):
    emulator.configure(job_processing_s=60)
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=False, poke_interval=0.1, timeout=0.3
    )
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute(context())


def test_sensor_reschedule_mode_gives_the_slot_back(emulator, make_conn, airflow_db):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, mode="reschedule", deferrable=False, poke_interval=5
    )
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(context())


def test_sensor_deferrable_checks_once_then_defers_with_absolute_deadline(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=True, poke_interval=7, timeout=600
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context())
    trigger = info.value.trigger
    assert isinstance(trigger, KakaoPoseJobTrigger)
    assert info.value.method_name == "execute_complete"
    assert (trigger.job_id, trigger.kakao_pose_conn_id, trigger.poll_interval) == (job_id, conn_id, 7.0)
    assert before + 600 <= trigger.end_time <= time.time() + 600
    assert emulator.count(method="GET") == 1


def test_sensor_deferrable_does_not_defer_a_finished_job(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    wait_done(conn_id, job_id)
    polls = emulator.count(method="GET")
    sensor = KakaoPoseJobSensor(task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=True)
    try:
        sensor.execute(context())
    except TaskDeferred:
        pytest.fail("the sensor deferred a job that had already finished")
    assert emulator.count(method="GET") == polls + 1  # one look, in the worker


def test_deferrable_defaults_to_the_default_deferrable_setting(monkeypatch):
    assert KakaoPoseJobSensor(task_id="a", job_id="j").deferrable is False
    assert KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert KakaoPoseJobSensor(task_id="b", job_id="j").deferrable is True
    assert KakaoPoseVideoOperator(task_id="w", video=VIDEO_URL).deferrable is True
    assert KakaoPoseJobSensor(task_id="c", job_id="j", deferrable=False).deferrable is False


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("success", None),
        ("failed", KakaoPoseJobFailedError),
        ("not found", KakaoPoseJobNotFoundError),
        ("timeout", AirflowSensorTimeout),
        ("error", KakaoPoseError),
    ],
)
def test_sensor_execute_complete_every_status(status, error):
    sensor = KakaoPoseJobSensor(task_id="s", job_id="j1")
    event = {"status": status, "job_id": "j1", "message": f"job j1: {status}"}
    if error is None:
        assert sensor.execute_complete(context(), event) is None
    else:
        with pytest.raises(error, match=f"job j1: {status}"):
            sensor.execute_complete(context(), event)


def run_trigger(trigger: KakaoPoseJobTrigger) -> dict:
    import asyncio

    async def first() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger fired no event")

    return asyncio.run(first())


def sensor_outcome(mode: str, conn_id: str, job_id: str, **kwargs: Any) -> str:
    """Run a ``soft_fail=True`` sensor the way the task runner does in ``mode``; name the outcome: "success",
    "skipped" or the error's class name."""
    from airflow_provider_kakaopose._compat import AirflowSkipException

    def sensor() -> KakaoPoseJobSensor:
        return KakaoPoseJobSensor(
            task_id="s",
            job_id=job_id,
            kakao_pose_conn_id=conn_id,
            soft_fail=True,
            poke_interval=0.1,
            mode="reschedule" if mode == "reschedule" else "poke",
            deferrable=mode == "deferrable",
            **kwargs,
        )

    for _ in range(100):
        try:
            try:
                sensor().execute(context())
            except TaskDeferred as deferred:  # the triggerer runs the trigger, a new instance resumes
                event = run_trigger(deferred.trigger)
                sensor().resume_execution(deferred.method_name, {"event": event}, context())
            return "success"
        except AirflowSkipException:
            return "skipped"
        except AirflowRescheduleException:
            time.sleep(0.1)  # the scheduler starts a new try later
        except Exception as err:
            return type(err).__name__
    raise AssertionError("still rescheduling")


@pytest.mark.parametrize("mode", ["poke", "reschedule", "deferrable"])
def test_soft_fail_skips_only_on_timeout_in_every_mode(emulator, make_conn, mode, airflow_db):
    """``soft_fail`` means "skip if the job is not done in time" in all three modes: a failed or missing
    job, or a polling error, fails the task (deferrable mode used to skip all of them)."""
    conn_id = make_conn(max_retries=0)
    hook = KakaoPoseHook(conn_id)
    emulator.configure(job_waiting_s=0.3)  # long enough for the deferrable sensor to defer first
    failed = hook.submit_video_job(video_url="https://x.invalid/v.mp4")
    assert sensor_outcome(mode, conn_id, failed) == "KakaoPoseJobFailedError"
    assert sensor_outcome(mode, conn_id, "no-such-job") == "KakaoPoseJobNotFoundError"
    running = hook.submit_video_job(video_url=VIDEO_URL)
    emulator.configure(job_processing_s=60)
    if mode == "deferrable":  # the first check passes, the trigger's polls fail
        outcome = sensor_outcome_after_first_check(conn_id, running, emulator)
    else:
        emulator.script_faults(["500"])
        outcome = sensor_outcome(mode, conn_id, running)
    assert outcome == "KakaoPoseServerError"
    if mode != "reschedule":  # reschedule's timeout is counted from rescheduled tries in the DB
        assert sensor_outcome(mode, conn_id, running, timeout=0.5) == "skipped"


def sensor_outcome_after_first_check(conn_id: str, job_id: str, emulator: Any) -> str:
    """A deferrable soft_fail sensor whose trigger's polling fails for good after it deferred."""
    from airflow_provider_kakaopose._compat import AirflowSkipException

    def sensor() -> KakaoPoseJobSensor:
        return KakaoPoseJobSensor(
            task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, soft_fail=True, poke_interval=0.1, deferrable=True
        )

    with pytest.raises(TaskDeferred) as deferred:
        sensor().execute(context())
    emulator.script_faults(["500"])  # the connection allows no retry: the trigger's first poll fails for good
    event = run_trigger(deferred.value.trigger)
    assert event["status"] == "error"
    try:
        sensor().resume_execution(deferred.value.method_name, {"event": event}, context())
    except AirflowSkipException:
        return "skipped"
    except Exception as err:
        return type(err).__name__
    return "success"


def test_poke_mode_sensor_uses_one_hook_and_closes_it(emulator, make_conn, monkeypatch):
    """All the pokes of a try share one hook (one HTTP session), closed when the try ends; it used to be a
    new hook per poke, none closed."""
    import requests

    made: list[Any] = []
    closed: list[Any] = []

    class Recording(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(requests, "Session", Recording)
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    made.clear()
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=False, poke_interval=0.1, timeout=30
    )
    sensor.execute(context())
    assert emulator.count(method="GET") >= 3  # several pokes
    assert len(made) == 1 and closed == made


def test_sensor_job_id_is_templated():
    assert "job_id" in KakaoPoseJobSensor.template_fields


# ------------------------------------------------------------------------------------- video operator


def test_video_operator_defers_then_writes_parquet(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    out = tmp_path / "video.parquet"
    op = video_operator(conn_id, str(out), deferrable=True, poll_interval=0.5, timeout=120)
    ctx = context()
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx)
    trigger = info.value.trigger
    job_id = ctx["ti"].xcom["job_id"]
    assert trigger.job_id == job_id and trigger.poll_interval == 0.5
    assert trigger.end_time == pytest.approx(ctx["task_state_store"].data[JOB_STATE_KEY]["job"]["deadline"])
    wait_done(conn_id, job_id)
    assert op.execute_complete(ctx, {"status": "success", "job_id": job_id, "message": "ok"}) == job_id
    summary = ctx["ti"].xcom["summary"]
    assert summary["output_uri"] == str(out) and summary["job_id"] == job_id
    table = pq.read_table(out)
    assert summary["rows"] == table.num_rows > 0
    assert summary["frames"] == 8
    assert summary["persons"] == table["keypoint_id"].to_pylist().count(1) > 0
    assert set(table["source"].to_pylist()) == {VIDEO_URL}
    assert set(table["job_id"].to_pylist()) == {job_id}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("failed", KakaoPoseJobFailedError),
        ("not found", KakaoPoseJobNotFoundError),
        ("timeout", KakaoPoseError),
        ("error", KakaoPoseError),
    ],
)
def test_video_operator_execute_complete_failures(status, error):
    op = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, output_uri="/tmp/never.parquet")
    with pytest.raises(error, match="boom"):
        op.execute_complete(context(), {"status": status, "job_id": "j", "message": f"boom {status}"})


@pytest.mark.parametrize(
    "event",
    [None, "success", {}, {"job_id": "j"}, {"status": "success"}, {"status": "done", "job_id": "j"}],
    ids=["none", "not-a-dict", "empty", "no-status", "success-without-id", "unknown-status"],
)
def test_execute_complete_refuses_a_missing_or_malformed_event(event):
    """The video operator and the sensor validate the trigger's event in one place
    (:func:`airflow_provider_kakaopose.jobs.job_id_from_event`): nothing goes on with a job id it never had."""
    op = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, output_uri="/tmp/never.parquet")
    sensor = KakaoPoseJobSensor(task_id="s", job_id="j")
    for task in (op, sensor):
        with pytest.raises(KakaoPoseError, match="Unexpected trigger event") as info:
            task.execute_complete(context(), event)
        assert type(info.value) is KakaoPoseError
    with pytest.raises(KakaoPoseError, match="Unexpected trigger event None"):
        sensor.execute_complete(context())  # no event at all


def test_dag_files_import_no_heavy_library():
    """DAG parsing imports the operators and the sensor: none of pyarrow, pandas, numpy, aiohttp, redis (nor
    the trigger or table modules) comes with them."""
    import subprocess
    import sys

    heavy = ("pyarrow", "pandas", "numpy", "aiohttp", "redis", "PIL", "airflow_provider_kakaopose.tables")
    code = (
        "import sys\n"
        "import airflow_provider_kakaopose.operators.pose, airflow_provider_kakaopose.sensors.pose\n"
        f"print('loaded:', *(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "loaded:"  # (Airflow may log to stdout before it)


def test_video_operator_retry_reattaches_instead_of_resubmitting(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    store = FakeStore()

    def attempt():
        op = video_operator(conn_id, str(tmp_path / "o.parquet"), deferrable=True, poll_interval=0.2)
        with pytest.raises(TaskDeferred) as info:
            op.execute(context(store))
        return info.value.trigger

    first, second = attempt(), attempt()  # the second try finds the job still running
    assert first.job_id == second.job_id
    assert first.end_time == second.end_time  # the deadline is kept, not restarted
    assert emulator.count(method="POST", path="/pose/job") == 1
    wait_done(conn_id, first.job_id)
    # A try after success loads the finished job without submitting or deferring.
    op = video_operator(conn_id, str(tmp_path / "o.parquet"), deferrable=True)
    assert op.execute(context(store)) == first.job_id
    assert emulator.count(method="POST", path="/pose/job") == 1


def test_video_operator_resubmits_when_the_earlier_job_failed(emulator, make_conn):
    conn_id = make_conn()
    store = FakeStore()
    store.set(JOB_STATE_KEY, {"job_id": "gone", "video": VIDEO_URL, "deadline": time.time() + 60})
    op = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, wait_for_completion=False, kakao_pose_conn_id=conn_id)
    job_id = op.execute(context(store))
    assert job_id != "gone" and store.data[JOB_STATE_KEY]["job"]["job_id"] == job_id
    assert emulator.count(method="POST", path="/pose/job") == 1


@pytest.mark.parametrize(
    ("change", "value"), [("smoothing", False), ("callback_url", "https://example.com/hook"), ("video", None)]
)
def test_a_cleared_task_reuses_its_job_only_with_the_same_settings(emulator, make_conn, tmp_path, change, value):
    """Clearing a succeeded task re-attaches to its job only if the video *and* the settings sent with it
    are the same (it used to compare only the video, reusing a job analysed with other settings)."""
    conn_id = make_conn()
    store = FakeStore()
    base = {"task_id": "v", "video": VIDEO_URL, "output_uri": str(tmp_path / "o.parquet")}
    base["kakao_pose_conn_id"] = conn_id
    first = KakaoPoseVideoOperator(**base, poll_interval=0.1).execute(context(store))
    assert emulator.count(method="POST", path="/pose/job") == 1
    same = KakaoPoseVideoOperator(**base, poll_interval=0.1).execute(context(store))
    assert same == first and emulator.count(method="POST", path="/pose/job") == 1
    changed = {**base, change: value if value is not None else VIDEO_URL + "&v=2"}
    other = KakaoPoseVideoOperator(**changed, poll_interval=0.1).execute(context(store))
    assert other != first
    assert emulator.count(method="POST", path="/pose/job") == 2
    sent = [r.fields for r in emulator.requests if r.method == "POST"][-1]
    assert sent.get("smoothing") == ("false" if change == "smoothing" else "true")


@pytest.mark.parametrize("fault", ["slow", "504"])
def test_a_submission_with_an_unknown_outcome_is_recorded_warned_and_counted(
    emulator, make_conn, tmp_path, capsys, caplog, fault
):
    """A submission cut off after it may have reached the service (read timeout, a gateway's 504) fails the
    try without resending; the record beside the task's state makes the retry warn that a duplicate job may
    be billed, and the count shows in the task's summary."""
    emulator.configure(slow_seconds=1.0)
    conn_id = make_conn(read_timeout=0.3)
    store = FakeStore()
    op = dict(task_id="v", video=VIDEO_URL, output_uri=str(tmp_path / "o.parquet"), kakao_pose_conn_id=conn_id)
    emulator.script_faults([fault])
    with pytest.raises(KakaoPoseError, match="may have reached the service") as info:
        KakaoPoseVideoOperator(**op, poll_interval=0.1).execute(context(store))
    assert info.value.outcome_unknown
    record = store.data[JOB_STATE_KEY]
    assert record["unknown_submissions"] == 1 and record["pending"] is None and record["job"] is None
    capsys.readouterr()
    ctx = context(store)
    KakaoPoseVideoOperator(**op, poll_interval=0.1).execute(ctx)  # the retry
    assert ctx["ti"].xcom["summary"]["unknown_submissions"] == 1 and ctx["ti"].xcom["unknown_submissions"] == 1
    assert emulator.count(method="POST", path="/pose/job") == 2
    logged = capsys.readouterr().out + caplog.text  # the task's log (structlog on Airflow 3, logging on 2)
    assert "1 earlier submission(s) of this task had an unknown outcome" in logged and "billed" in logged


def test_a_try_killed_mid_submission_is_counted_by_the_next_try(emulator, make_conn, tmp_path):
    """The record says "a submission is under way" before the request is sent: a worker killed before the
    answer was recorded leaves it, and the next try counts one submission of unknown outcome."""
    conn_id = make_conn()
    store = FakeStore()
    store.set(JOB_STATE_KEY, {"job": None, "pending": {"video": VIDEO_URL, "since": time.time() - 5}})
    op = KakaoPoseVideoOperator(
        task_id="v", video=VIDEO_URL, output_uri=str(tmp_path / "o.parquet"), kakao_pose_conn_id=conn_id
    )
    op.poll_interval = 0.1
    ctx = context(store)
    op.execute(ctx)
    assert ctx["ti"].xcom["summary"]["unknown_submissions"] == 1
    record = store.data[JOB_STATE_KEY]
    assert "before its answer was recorded" in record["last_unknown"] and record["pending"] is None


def test_without_a_task_state_store_the_job_record_lives_beside_the_output(emulator, make_conn, tmp_path):
    """Airflow < 3.3 has no task state store: the record goes to ``_kakaopose/<stem>.job.json`` beside the table,
    out of the dataset, written
    before the deferral, so a retry re-attaches there too (one submission), and a record written by another
    task instance is not taken for this one's."""
    import json

    conn_id = make_conn()
    out = tmp_path / "o.parquet"

    def attempt(ti: FakeTI | None = None) -> Any:
        op = video_operator(conn_id, str(out), deferrable=True, poll_interval=0.2)
        ctx = {"ti": ti or FakeTI()}  # no "task_state_store"
        try:
            return op.execute(ctx)
        except TaskDeferred as deferred:
            return deferred.trigger

    first = attempt()
    record = json.loads((tmp_path / "_kakaopose" / "o.job.json").read_text())
    assert record["job"]["job_id"] == first.job_id and record["pending"] is None
    assert record["run"] == json.dumps(["test_dag", "test_run", "test_task", -1])
    second = attempt()  # the retry finds the job still running
    assert second.job_id == first.job_id and second.end_time == first.end_time
    assert emulator.count(method="POST", path="/pose/job") == 1
    wait_done(conn_id, first.job_id)
    assert attempt() == first.job_id and out.exists()  # after it finished: loaded without submitting or deferring
    assert emulator.count(method="POST", path="/pose/job") == 1
    other = FakeTI()
    other.run_id = "another_run"  # same output path, another run: not its job
    assert attempt(other).job_id != first.job_id
    assert emulator.count(method="POST", path="/pose/job") == 2


def test_video_operator_waits_in_the_worker_when_not_deferrable(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    op = video_operator(conn_id, str(tmp_path / "w.parquet"))
    ctx = context()
    assert op.execute(ctx) == ctx["ti"].xcom["job_id"]
    summary = ctx["ti"].xcom["summary"]
    assert summary["frames"] == 8 and pq.read_table(tmp_path / "w.parquet").num_rows == summary["rows"]


def test_video_operator_worker_wait_times_out(emulator, make_conn):
    emulator.configure(job_processing_s=60)
    op = video_operator(make_conn(), "/tmp/x.parquet", timeout=0.4)
    with pytest.raises(KakaoPoseError, match="still"):
        op.execute(context())


def test_video_operator_uploads_local_files(emulator, make_conn, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    op = KakaoPoseVideoOperator(
        task_id="v", video=str(video), wait_for_completion=False, smoothing=False, kakao_pose_conn_id=make_conn()
    )
    op.execute(context())
    [req] = emulator.requests
    assert req.file_name == "clip.mp4" and req.fields == {"smoothing": "false"}


def test_video_operator_failed_job_in_worker(emulator, make_conn):
    op = video_operator(make_conn(), "/tmp/x.parquet", video="https://x.invalid/v.mp4")
    with pytest.raises(KakaoPoseJobFailedError, match="Failed to get video"):
        op.execute(context())


def test_templated_fields():
    assert set(KakaoPoseVideoOperator.template_fields) == {"video", "output_uri", "callback_url", "kakao_pose_conn_id"}
    assert set(KakaoPoseImageOperator.template_fields) == {"images", "output_uri", "errors_uri", "kakao_pose_conn_id"}
    assert set(KakaoPoseJobToParquetOperator.template_fields) >= {"job_id", "output_uri"}


# ------------------------------------------------------------------------------------- image operator


def test_image_operator_urls_and_files(emulator, make_conn, tmp_path):
    local = tmp_path / "a.png"
    local.write_bytes(image_bytes())
    other = tmp_path / "b.jpg"
    other.write_bytes(image_bytes(fmt="JPEG"))
    images = ["https://example.com/1.jpg", str(local), f"file://{other}"]
    out = tmp_path / "out" / "images.parquet"
    op = KakaoPoseImageOperator(task_id="i", images=images, output_uri=str(out), kakao_pose_conn_id=make_conn())
    summary = op.execute(context())
    table = pq.read_table(out)
    assert summary == {
        "output_uri": str(out),
        "errors_uri": str(tmp_path / "out" / "_kakaopose" / "images.errors.parquet"),
        "images": 3,
        "duplicates": 0,
        "succeeded": 3,
        "failed": 0,
        "persons": summary["persons"],
        "rows": table.num_rows,
        "reused": 0,
    }
    assert summary["rows"] == 17 * summary["persons"]
    assert set(table["source"].to_pylist()) <= set(images)
    assert sorted(r.file_name or "" for r in emulator.requests) == ["", "a.png", "b.jpg"]
    assert table["frame_num"].to_pylist() == [0] * table.num_rows
    assert set(table["job_id"].to_pylist()) == {None}


def test_image_operator_single_item_and_bad_inputs(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    out = tmp_path / "one.parquet"
    KakaoPoseImageOperator(
        task_id="i", images="https://example.com/1.jpg", output_uri=str(out), kakao_pose_conn_id=conn_id
    ).execute(context())
    assert out.exists()
    for bad in ([], [""], None):
        with pytest.raises(KakaoPoseInputError, match="images must be"):
            KakaoPoseImageOperator(task_id="i", images=bad, output_uri=str(out), kakao_pose_conn_id=conn_id).execute(
                context()
            )
    with pytest.raises(KakaoPoseError, match=r"1 of 1 image\(s\) failed"):  # recorded, then the task fails
        KakaoPoseImageOperator(
            task_id="i", images=[str(tmp_path / "missing.png")], output_uri=str(out), kakao_pose_conn_id=conn_id
        ).execute(context())
    assert emulator.count() == 1


def test_image_operator_pictures_draw_over_the_local_source_images(emulator, make_conn, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(photo)  # a green "photo"
    out = tmp_path / "pics" / "keypoints.parquet"
    images = [str(photo), "https://example.com/1.jpg"]
    summary = KakaoPoseImageOperator(
        task_id="i", images=images, output_uri=str(out), pictures=True, kakao_pose_conn_id=make_conn()
    ).execute(context())
    sheet_path = tmp_path / "pics" / "_kakaopose" / "keypoints.png"  # out of the dataset
    assert summary["pictures"] == {"png": str(sheet_path)}
    with Image.open(sheet_path) as sheet:
        colours = {c for _, c in sheet.convert("RGB").getcolors(1 << 24)}
    assert (10, 200, 30) in colours  # the local photo is the background of its cell
    assert not KakaoPoseImageOperator(task_id="j", images=images, output_uri=str(out)).pictures  # off by default


# ------------------------------------------------------------------------------------------ load step


def test_job_to_parquet_operator(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    hook = KakaoPoseHook(conn_id)
    job_id = hook.submit_video_job(video_url=VIDEO_URL)
    wait_done(conn_id, job_id)
    out = tmp_path / "load.parquet"
    summary = KakaoPoseJobToParquetOperator(
        task_id="l", job_id=job_id, output_uri=str(out), source="walk", kakao_pose_conn_id=conn_id
    ).execute(context())
    assert summary["rows"] == pq.read_table(out).num_rows and summary["frames"] == 8
    failed = hook.submit_video_job(video_url="https://x.invalid/v.mp4")
    wait_done(conn_id, failed)
    with pytest.raises(KakaoPoseJobFailedError):
        KakaoPoseJobToParquetOperator(
            task_id="l", job_id=failed, output_uri=str(out), kakao_pose_conn_id=conn_id
        ).execute(context())
    with pytest.raises(KakaoPoseJobNotFoundError):
        KakaoPoseJobToParquetOperator(
            task_id="l", job_id="nope", output_uri=str(out), kakao_pose_conn_id=conn_id
        ).execute(context())


def test_asset_output_is_declared_as_outlet(tmp_path):
    from airflow_provider_kakaopose._compat import Asset

    asset = Asset(f"file://{tmp_path}/pose.parquet")
    op = KakaoPoseJobToParquetOperator(task_id="l", job_id="j", output_uri=asset)
    assert asset in op.outlets


def test_video_operator_tracks_people_and_writes_pictures(emulator, make_conn, tmp_path):
    from PIL import Image

    out = tmp_path / "v.parquet"
    op = video_operator(make_conn(), str(out), pictures=True)
    ctx = context()
    op.execute(ctx)
    summary = ctx["ti"].xcom["summary"]
    table = pq.read_table(out)
    assert table.column_names.index("track_id") == table.column_names.index("person_idx") + 1
    assert summary["tracks"] == len(set(table["track_id"].to_pylist())) >= 2
    sidecars = tmp_path / "_kakaopose"
    assert summary["pictures"] == {"png": str(sidecars / "v.png"), "gif": str(sidecars / "v.gif")}
    assert Image.open(sidecars / "v.png").size[0] > 0
    assert Image.open(sidecars / "v.gif").n_frames >= 2
    assert pd.read_parquet(tmp_path).shape == pq.read_table(out).shape  # the folder reads as the keypoints alone


def test_video_operator_without_tracking_streams_the_plain_table(emulator, make_conn, tmp_path):
    out = tmp_path / "plain.parquet"
    video_operator(make_conn(), str(out), track_people=False).execute(context())
    assert "track_id" not in pq.read_table(out).column_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_kakaopose", "plain.parquet"]
    assert sorted(p.name for p in (tmp_path / "_kakaopose").iterdir()) == ["plain.task.json"]


class FailingStore(FakeStore):
    """A task state store whose writes fail ``failures`` times once the submission's pending record is saved."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures, self.calls = failures, 0

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.calls += 1
        if self.calls > 1 and self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().set(key, value, retention=retention)


def test_a_job_record_that_fails_to_save_once_is_saved_again(emulator, make_conn, tmp_path, capsys, caplog):
    """The record of a submitted job fails to save once: saved again, no second job, the id in the log."""
    store = FailingStore(failures=1)
    job_id = video_operator(make_conn(), str(tmp_path / "o.parquet")).execute(context(store))
    assert store.data[JOB_STATE_KEY]["job"]["job_id"] == job_id
    assert emulator.count(method="POST", path="/pose/job") == 1
    assert f"as job {job_id}" in capsys.readouterr().out + caplog.text


def test_a_job_record_that_cannot_be_saved_names_the_job_in_the_log_and_the_error(emulator, make_conn, capsys, caplog):
    """The record cannot be saved at all (a full disk, a failing state store): the job id was logged first and
    the error carries it, so the paid job can still be found and loaded."""
    op = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, deferrable=False, kakao_pose_conn_id=make_conn())
    with pytest.raises(KakaoPoseError) as info:
        op.execute(context(FailingStore(failures=99)))
    logged = capsys.readouterr().out + caplog.text
    [job_id] = {line.rsplit("as job ", 1)[1].split()[0] for line in logged.splitlines() if "Submitted" in line}
    assert job_id in str(info.value) and "could not be saved" in str(info.value)
    assert KakaoPoseHook(make_conn()).get_job_status(job_id)["status"] in ("waiting", "processing", "success")


# ------------------------------------------------------------------------------ a wait you can watch


def test_a_worker_waiting_25_s_logs_its_status_every_10_s(emulator, make_conn, capsys, caplog):
    """A job processing ~25 s polled every second, by the video operator waiting in the worker and by the
    sensor in poke mode (side by side): each logs its status at INFO at 0 s, 10 s, 20 s and when the job ends —
    not one line per poll, and not one line and then silence until the end (what the operator used to do)."""
    import logging
    import threading

    from helpers import allow_execute_in_this_thread
    from test_trigger import log_text, status_lines

    caplog.set_level(logging.INFO)
    emulator.configure(job_waiting_s=0, job_processing_s=25)
    conn_id = make_conn()
    sensed = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL + "&sensed=1")
    sensor = KakaoPoseJobSensor(
        task_id="s", job_id=sensed, kakao_pose_conn_id=conn_id, deferrable=False, poke_interval=1, timeout=600
    )
    errors: list[BaseException] = []

    def sense() -> None:
        allow_execute_in_this_thread()
        try:
            sensor.execute(context())
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=sense)
    thread.start()
    ctx = context()
    op = KakaoPoseVideoOperator(
        task_id="v", video=VIDEO_URL, deferrable=False, poll_interval=1, timeout=600, kakao_pose_conn_id=conn_id
    )
    job_id = op.execute(ctx)
    thread.join(60)
    assert not errors and not thread.is_alive()
    text = log_text(capsys, caplog)
    for job in (job_id, sensed):
        lines = status_lines(text, job)
        processing = [line for line in lines if " is processing: waited " in line]
        assert len(processing) == 3, lines  # 0 s, 10 s, 20 s
        assert all("deadline 20" in line and ("(in 9 m " in line or "(in 10 m " in line) for line in processing)
        assert [line for line in lines if " is success: waited 2" in line], lines  # the end, after 25-26 s
        assert len(lines) == 4, lines
    assert emulator.count(method="GET") >= 40  # both polled every second


# ----------------------------------------------------------------------------------- return values


def test_the_video_operator_always_returns_the_job_id(emulator, make_conn, tmp_path):
    """Like dbt Cloud's run id: the job id whether the task waited or not, deferred or not, with a table or
    without; the table's summary is the ``summary`` XCom."""
    conn_id = make_conn()
    base = {"video": VIDEO_URL, "poll_interval": 0.1, "kakao_pose_conn_id": conn_id}

    def run(**kwargs: Any) -> tuple[Any, dict]:
        ctx = context()
        op = KakaoPoseVideoOperator(task_id="v", **base, **kwargs)
        try:
            returned = op.execute(ctx)
        except TaskDeferred as deferred:
            job_id = deferred.trigger.job_id
            wait_done(conn_id, job_id)
            returned = op.execute_complete(ctx, {"status": "success", "job_id": job_id, "message": "ok"})
        assert isinstance(returned, str) and returned == ctx["ti"].xcom["job_id"], returned
        return returned, ctx["ti"].xcom

    _, xcom = run(wait_for_completion=False)
    assert "summary" not in xcom
    _, xcom = run(deferrable=False)  # waited, no table
    assert "summary" not in xcom
    job_id, xcom = run(deferrable=False, output_uri=str(tmp_path / "w.parquet"))
    assert xcom["summary"]["job_id"] == job_id and xcom["summary"]["output_uri"] == str(tmp_path / "w.parquet")
    keys = {"output_uri", "job_id", "frames", "persons", "rows", "tracks", "unknown_submissions"}
    assert set(xcom["summary"]) == keys
    job_id, xcom = run(deferrable=True, output_uri=str(tmp_path / "d.parquet"))
    assert xcom["summary"]["rows"] == pq.read_table(tmp_path / "d.parquet").num_rows
    assert "job_url" not in xcom  # the link it fed is gone


# ------------------------------------------------------------------------------ templated connection


def test_every_operator_and_the_sensor_template_their_connection_id():
    for cls in (KakaoPoseImageOperator, KakaoPoseVideoOperator, KakaoPoseJobToParquetOperator, KakaoPoseJobSensor):
        assert "kakao_pose_conn_id" in cls.template_fields, cls.__name__


def test_a_templated_connection_id_is_rendered_before_it_is_used(emulator, make_conn, tmp_path):
    """``kakao_pose_conn_id="{{ params.pose_conn }}"``: every operator and the sensor use the rendered id (a
    connection that exists only under that name), in the worker and in the trigger they defer to."""
    conn_id = make_conn()
    templated = {"kakao_pose_conn_id": "{{ params.pose_conn }}"}

    def rendered(op: Any) -> dict[str, Any]:
        ctx = context()
        ctx["params"] = {"pose_conn": conn_id}
        op.render_template_fields(ctx)
        assert op.kakao_pose_conn_id == conn_id
        return ctx

    video = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, deferrable=True, poll_interval=0.1, **templated)
    with pytest.raises(TaskDeferred) as info:
        video.execute(rendered(video))
    trigger = info.value.trigger
    assert trigger.kakao_pose_conn_id == conn_id
    wait_done(conn_id, trigger.job_id)
    sensor = KakaoPoseJobSensor(task_id="s", job_id=trigger.job_id, deferrable=False, poke_interval=0.1, **templated)
    sensor.execute(rendered(sensor))
    load = KakaoPoseJobToParquetOperator(
        task_id="l", job_id=trigger.job_id, output_uri=str(tmp_path / "l.parquet"), **templated
    )
    assert load.execute(rendered(load))["job_id"] == trigger.job_id
    images = KakaoPoseImageOperator(
        task_id="i", images=["https://example.com/a.jpg"], output_uri=str(tmp_path / "i.parquet"), **templated
    )
    assert images.execute(rendered(images))["succeeded"] == 1
    assert emulator.count(method="POST", path="/pose") == 1 and emulator.count(method="POST", path="/pose/job") == 1


# ----------------------------------------------------------------------- the connection's documented forms


@pytest.mark.parametrize("form", ["json", "uri"])
def test_the_documented_connection_forms_and_the_airflow_2_scheme_warning(emulator, monkeypatch, caplog, form):
    """docs/connection.md's two forms, read by a hook on the Airflow under test. Airflow 2.11 logs "Connection
    schemes (type: kakao_pose) shall not contain '_'" at every lookup whatever the form: after any lookup
    ``Connection.get_connection_from_secrets`` calls ``get_uri()`` (to fill its secrets cache, even when the
    cache is off), which warns for any type with ``_``, and both forms end as ``kakao_pose`` (2.11 turns
    ``kakao-pose://`` and ``"conn_type": "kakao-pose"`` into it). Harmless, as the page says; 3.0 logs it too
    (measured: 3.0.6), 3.1 and later do not."""
    import json
    import logging
    from urllib.parse import quote, urlsplit

    from helpers import API_KEY

    from airflow_provider_kakaopose._compat import AIRFLOW_V_3_1_PLUS

    if form == "json":
        value = json.dumps({"conn_type": "kakao_pose", "host": emulator.base_url, "password": API_KEY})
    else:
        netloc = urlsplit(emulator.base_url).netloc
        value = f"kakao-pose://:{quote(API_KEY, safe='')}@{netloc}?scheme=http&read_timeout=30"
    monkeypatch.setenv("AIRFLOW_CONN_POSE_FORM", value)
    caplog.set_level(logging.WARNING)
    with KakaoPoseHook("pose_form") as hook:
        assert hook.settings.base_url == emulator.base_url
        assert hook.get_job_status("00000000-0000-4000-8000-000000000000")["status"] == "not found"
    warned = [r for r in caplog.records if "shall not contain '_'" in r.getMessage()]
    if AIRFLOW_V_3_1_PLUS:
        assert warned == []
    else:
        assert warned and all("kakao_pose" in r.getMessage() for r in warned)
