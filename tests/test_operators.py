"""Operators and the sensor, executed directly against the emulator (no scheduler)."""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
import pytest
from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSensorTimeout, TaskDeferred
from conftest import image_bytes

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

VIDEO_URL = "https://example.com/walk.mp4?frames=8&persons=2"


class FakeStore:
    """Stands in for Airflow 3.3's task state store (kept across tries of one task instance)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        assert value is not None
        self.data[key] = value


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def get_first_reschedule_date(self, context: Any) -> None:
        return None


def context(store: FakeStore | None = None) -> dict[str, Any]:
    return {"ti": FakeTI(), "task_state_store": store if store is not None else FakeStore()}


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


def test_sensor_reschedule_mode_gives_the_slot_back(emulator, make_conn):
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
    KakaoPoseJobSensor(task_id="s", job_id=job_id, kakao_pose_conn_id=conn_id, deferrable=True).execute(context())


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


def test_sensor_job_id_is_templated():
    assert "job_id" in KakaoPoseJobSensor.template_fields


# ------------------------------------------------------------------------------------- video operator


def test_video_operator_defers_then_writes_parquet(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    out = tmp_path / "video.parquet"
    op = KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri=str(out),
        deferrable=True,
        poll_interval=0.5,
        timeout=120,
        kakao_pose_conn_id=conn_id,
    )
    ctx = context()
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx)
    trigger = info.value.trigger
    job_id = ctx["ti"].xcom["job_id"]
    assert trigger.job_id == job_id and trigger.poll_interval == 0.5
    assert trigger.end_time == pytest.approx(ctx["task_state_store"].data[JOB_STATE_KEY]["deadline"])
    wait_done(conn_id, job_id)
    summary = op.execute_complete(ctx, {"status": "success", "job_id": job_id, "message": "ok"})
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


def test_video_operator_retry_reattaches_instead_of_resubmitting(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    store = FakeStore()

    def attempt():
        op = KakaoPoseVideoOperator(
            task_id="v",
            video=VIDEO_URL,
            output_uri=str(tmp_path / "o.parquet"),
            deferrable=True,
            poll_interval=0.2,
            kakao_pose_conn_id=conn_id,
        )
        with pytest.raises(TaskDeferred) as info:
            op.execute(context(store))
        return info.value.trigger

    first, second = attempt(), attempt()  # the second try finds the job still running
    assert first.job_id == second.job_id
    assert first.end_time == second.end_time  # the deadline is kept, not restarted
    assert emulator.count(method="POST", path="/pose/job") == 1
    wait_done(conn_id, first.job_id)
    # A try after success loads the finished job without submitting or deferring.
    op = KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri=str(tmp_path / "o.parquet"),
        deferrable=True,
        kakao_pose_conn_id=conn_id,
    )
    summary = op.execute(context(store))
    assert summary["job_id"] == first.job_id
    assert emulator.count(method="POST", path="/pose/job") == 1


def test_video_operator_resubmits_when_the_earlier_job_failed(emulator, make_conn):
    conn_id = make_conn()
    store = FakeStore()
    store.set(JOB_STATE_KEY, {"job_id": "gone", "video": VIDEO_URL, "deadline": time.time() + 60})
    op = KakaoPoseVideoOperator(task_id="v", video=VIDEO_URL, wait_for_completion=False, kakao_pose_conn_id=conn_id)
    job_id = op.execute(context(store))
    assert job_id != "gone" and store.data[JOB_STATE_KEY]["job_id"] == job_id
    assert emulator.count(method="POST", path="/pose/job") == 1


def test_video_operator_waits_in_the_worker_when_not_deferrable(emulator, make_conn, tmp_path):
    conn_id = make_conn()
    op = KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri=str(tmp_path / "w.parquet"),
        deferrable=False,
        poll_interval=0.1,
        kakao_pose_conn_id=conn_id,
    )
    summary = op.execute(context())
    assert summary["frames"] == 8 and pq.read_table(tmp_path / "w.parquet").num_rows == summary["rows"]


def test_video_operator_worker_wait_times_out(emulator, make_conn):
    emulator.configure(job_processing_s=60)
    op = KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri="/tmp/x.parquet",
        deferrable=False,
        poll_interval=0.1,
        timeout=0.4,
        kakao_pose_conn_id=make_conn(),
    )
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
    op = KakaoPoseVideoOperator(
        task_id="v",
        video="https://x.invalid/v.mp4",
        output_uri="/tmp/x.parquet",
        deferrable=False,
        poll_interval=0.1,
        kakao_pose_conn_id=make_conn(),
    )
    with pytest.raises(KakaoPoseJobFailedError, match="Failed to get video"):
        op.execute(context())


def test_templated_fields():
    assert set(KakaoPoseVideoOperator.template_fields) == {"video", "output_uri", "callback_url"}
    assert set(KakaoPoseImageOperator.template_fields) == {"images", "output_uri", "errors_uri"}
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
        "errors_uri": str(tmp_path / "out" / "images.errors.parquet"),
        "images": 3,
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
    assert summary["pictures"] == {"png": str(out.with_suffix(".png"))}
    with Image.open(out.with_suffix(".png")) as sheet:
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
    from airflow.sdk import Asset

    asset = Asset(f"file://{tmp_path}/pose.parquet")
    op = KakaoPoseJobToParquetOperator(task_id="l", job_id="j", output_uri=asset)
    assert asset in op.outlets


def test_video_operator_tracks_people_and_writes_pictures(emulator, make_conn, tmp_path):
    from PIL import Image

    out = tmp_path / "v.parquet"
    op = KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri=str(out),
        deferrable=False,
        poll_interval=0.1,
        pictures=True,
        kakao_pose_conn_id=make_conn(),
    )
    summary = op.execute(context())
    table = pq.read_table(out)
    assert table.column_names.index("track_id") == table.column_names.index("person_idx") + 1
    assert summary["tracks"] == len(set(table["track_id"].to_pylist())) >= 2
    assert summary["pictures"] == {"png": str(tmp_path / "v.png"), "gif": str(tmp_path / "v.gif")}
    assert Image.open(tmp_path / "v.png").size[0] > 0
    assert Image.open(tmp_path / "v.gif").n_frames >= 2


def test_video_operator_without_tracking_streams_the_plain_table(emulator, make_conn, tmp_path):
    out = tmp_path / "plain.parquet"
    KakaoPoseVideoOperator(
        task_id="v",
        video=VIDEO_URL,
        output_uri=str(out),
        deferrable=False,
        poll_interval=0.1,
        track_people=False,
        kakao_pose_conn_id=make_conn(),
    ).execute(context())
    assert "track_id" not in pq.read_table(out).column_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.parquet"]
