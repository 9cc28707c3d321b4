"""Callbacks end to end on loopback: the receiver (FastAPI under a real uvicorn), a real redis-server, the
emulator calling back, and triggers waking on one shared subscription."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import requests
from helpers import free_port, local_redis

from airflow_provider_kakaopose import callbacks
from airflow_provider_kakaopose.callbacks import make_token, parse_keys
from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
from airflow_provider_kakaopose.triggers import _wakeups
from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

SECRET = "k1:" + "s" * 24
KEYS = parse_keys(SECRET)
VIDEO_URL = "https://example.com/walk.mp4?frames=3"


@pytest.fixture
def store(tmp_path, monkeypatch):
    server = local_redis(tmp_path)
    server.start()
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE", server.url)
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_SECRET", SECRET)
    yield server
    server.stop()


@pytest.fixture
def receiver(store, monkeypatch):
    """The receiver's FastAPI app under a real uvicorn on loopback; yields its base URL."""
    import uvicorn

    from airflow_provider_kakaopose.plugins.receiver import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL", base)
    from fastapi import FastAPI

    root = FastAPI()  # mounted as the api-server mounts a plugin's app
    root.mount(callbacks.MOUNT_PATH, create_app())
    server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield base
    server.should_exit = True
    thread.join(10)


def bound_token(store: Any, job_id: str, expires: float | None = None) -> str:
    token, nonce = make_token(KEYS, expires or time.time() + 600)
    callbacks.bind_nonce(store.url, nonce, job_id, time.time() + 600)
    return token


def call(base: str, token: str | None, job_id: str | None) -> int:
    params = {k: v for k, v in (("token", token), ("job_id", job_id)) if v is not None}
    return requests.get(f"{base}{callbacks.MOUNT_PATH}{callbacks.ROUTE}", params=params, timeout=5).status_code


def test_receiver_records_a_genuine_callback_once_and_refuses_the_rest(receiver, store):
    client = store.client()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(callbacks.CHANNEL)
    token = bound_token(store, "job-a")
    assert call(receiver, token, "job-a") == 200
    assert call(receiver, token, "job-a") == 200  # a replay / duplicate: deduplicated
    assert call(receiver, token, "job-b") == 409  # a genuine token naming another job
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert call(receiver, tampered, "job-a") == 403
    assert call(receiver, bound_token(store, "job-c", expires=time.time() - 5), "job-c") == 403  # expired
    unbound, _ = make_token(KEYS, time.time() + 600)
    assert call(receiver, unbound, "job-d") == 404
    assert call(receiver, None, "job-a") == 400 and call(receiver, token, None) == 400
    assert call(receiver, token, "bad id!") == 400
    other, _ = make_token(parse_keys("k9:" + "x" * 24), time.time() + 600)
    assert call(receiver, other, "job-a") == 403  # signed by a key this deployment does not have
    messages = []
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message:
            messages.append(message["data"])
    assert messages == [b"job-a"]  # one wake-up, for the genuine callback only
    assert client.exists(callbacks.ENDED_KEY.format("job-a"))
    for job in ("job-b", "job-c", "job-d"):
        assert not client.exists(callbacks.ENDED_KEY.format(job))


def test_receiver_answers_503_when_redis_is_down(receiver, store):
    token = bound_token(store, "job-a")
    store.stop()
    assert call(receiver, token, "job-a") == 503


def test_a_callback_before_the_binding_counts_once_the_nonce_is_bound(receiver, store):
    token, nonce = make_token(KEYS, time.time() + 600)
    assert call(receiver, token, "job-early") == 404
    assert not store.client().exists(callbacks.ENDED_KEY.format("job-early"))
    assert callbacks.bind_nonce(store.url, nonce, "job-early", time.time() + 600) is True
    assert store.client().exists(callbacks.ENDED_KEY.format("job-early"))
    # an early claim for another job than the one bound causes nothing
    token2, nonce2 = make_token(KEYS, time.time() + 600)
    assert call(receiver, token2, "job-forged") == 404
    assert callbacks.bind_nonce(store.url, nonce2, "job-real", time.time() + 600) is False
    assert not store.client().exists(callbacks.ENDED_KEY.format("job-real"))


# ------------------------------------------------------------------------------------------------ triggers


def submit(conn_id: str, store: Any, base: str, video: str = VIDEO_URL) -> str:
    return submit_with_nonce(conn_id, store, base, video)[0]


def submit_with_nonce(conn_id: str, store: Any, base: str, video: str = VIDEO_URL) -> tuple[str, str]:
    """Submit as the operator does: with a signed callback URL, the nonce bound to the job; ``(job id, nonce)``."""
    token, nonce = make_token(KEYS, time.time() + 600)
    settings = callbacks.CallbackSettings(base, KEYS)
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=video, callback_url=settings.url(token))
    callbacks.bind_nonce(store.url, nonce, job_id, time.time() + 600)
    return job_id, nonce


def listening(jobs: list[str], conn_id: str) -> list[KakaoPoseJobTrigger]:
    """Triggers that listen for the jobs' callbacks (the fallback poll far beyond any test's length)."""
    end_time = time.time() + 60
    return [KakaoPoseJobTrigger(j, conn_id, end_time=end_time, callback=True, callback_poll_interval=600) for j in jobs]


async def wait_all(triggers: list[KakaoPoseJobTrigger]) -> list[dict]:
    async def one(trigger):
        [event] = [e.payload async for e in trigger.run()]
        return event

    return await asyncio.gather(*(one(t) for t in triggers))


def job_gets(emulator, job_id: str) -> int:
    return emulator.count(method="GET", path=f"/pose/job/{job_id}")


async def test_many_triggers_share_one_subscription_and_get_once_each(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0.2, job_processing_s=1.0)
    jobs = [submit(conn_id, store, receiver) for _ in range(40)]
    started = time.monotonic()
    task = asyncio.ensure_future(wait_all(listening(jobs, conn_id)))
    await asyncio.sleep(0.5)
    assert store.client().pubsub_numsub(callbacks.CHANNEL) == [(callbacks.CHANNEL.encode(), 1)]
    events = await task
    assert time.monotonic() - started < 10  # woken by callbacks, not by the 600 s fallback poll
    assert [e["status"] for e in events] == ["success"] * len(jobs)
    assert [job_gets(emulator, j) for j in jobs] == [1] * len(jobs)  # one confirming GET each
    listener = _wakeups._LISTENERS[asyncio.get_running_loop()][store.url]
    assert listener.subscriptions == 1 and not listener.waiters
    await asyncio.sleep(0.1)
    assert store.client().pubsub_numsub(callbacks.CHANNEL) == [(callbacks.CHANNEL.encode(), 0)]  # stopped


async def test_a_callback_that_came_before_the_trigger_started_is_not_lost(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    job_id = submit(conn_id, store, receiver)
    for _ in range(100):
        if emulator.callbacks_sent:
            break
        await asyncio.sleep(0.05)
    assert store.client().exists(callbacks.ENDED_KEY.format(job_id))
    trigger = KakaoPoseJobTrigger(job_id, conn_id, end_time=time.time() + 60, callback=True, callback_poll_interval=600)
    started = time.monotonic()
    [event] = await wait_all([trigger])
    assert event["status"] == "success" and time.monotonic() - started < 3
    assert job_gets(emulator, job_id) == 1


async def test_a_lost_callback_costs_one_fallback_poll(emulator, make_conn, store):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)  # no callback will ever come
    trigger = KakaoPoseJobTrigger(job_id, conn_id, end_time=time.time() + 60, callback=True, callback_poll_interval=2)
    started = time.monotonic()
    [event] = await wait_all([trigger])
    took = time.monotonic() - started
    assert event["status"] == "success" and 1.4 <= took <= 2.6  # one fallback poll, 75-100 % of 2 s
    assert job_gets(emulator, job_id) == 1


async def test_a_trigger_started_again_after_its_triggerer_died_checks_its_job_at_once(emulator, make_conn, store):
    """A wait that began 60 s ago (its first triggerer died meanwhile, and the job's callback was lost): the new
    trigger checks the job right away instead of after a whole fallback interval counted from its start."""
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0, job_processing_s=0.1)
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)  # ends at once; no callback comes
    await asyncio.sleep(0.5)
    kwargs = {"end_time": time.time() + 60, "callback": True, "callback_poll_interval": 600}
    fresh = KakaoPoseJobTrigger(job_id, conn_id, waiting_since=time.time(), **kwargs)
    again = KakaoPoseJobTrigger(job_id, conn_id, waiting_since=time.time() - 60, **kwargs)
    started = time.monotonic()
    [event] = await wait_all([again])
    assert event["status"] == "success" and time.monotonic() - started < 5
    assert job_gets(emulator, job_id) == 1
    with pytest.raises(asyncio.TimeoutError):  # a wait that just began does not poll: it listens
        await asyncio.wait_for(wait_all([fresh]), 1.5)
    assert job_gets(emulator, job_id) == 1


async def test_waits_survive_a_redis_restart_and_see_callbacks_recorded_before_resubscribing(
    emulator, make_conn, store, monkeypatch
):
    monkeypatch.setattr(_wakeups, "RECONNECT_S", (1.5,))
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0.2, job_processing_s=0.5)
    jobs = [KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL) for _ in range(5)]
    started = time.monotonic()
    task = asyncio.ensure_future(wait_all(listening(jobs, conn_id)))
    await asyncio.sleep(0.5)
    listener = _wakeups._LISTENERS[asyncio.get_running_loop()][store.url]
    assert listener.subscriptions == 1
    store.stop()
    await asyncio.sleep(0.2)
    store.start()
    client = store.client()
    for job_id in jobs:  # what the receiver does for each callback, while the listener is not subscribed yet
        client.set(callbacks.NONCE_KEY.format("n-" + job_id), job_id)
        client.eval(callbacks.RECORD_SCRIPT, 3, *callbacks.record_keys("n-" + job_id, job_id), job_id, 60, 60)
    assert listener.subscriptions == 1 and not listener.subscribed.is_set()
    events = await asyncio.wait_for(task, 20)
    assert [e["status"] for e in events] == ["success"] * len(jobs)
    assert listener.subscriptions == 2 and time.monotonic() - started < 10  # not the 600 s fallback poll
    assert [job_gets(emulator, j) for j in jobs] == [1] * len(jobs)


# ------------------------------------------------------------------------------------------------ the operator


class _Store(dict):
    """Airflow 3.3's task state store, enough for the video operator."""

    def set(self, key, value, *, retention=None):
        self[key] = value


class _TI:
    dag_id, run_id, task_id, map_index, max_tries, try_number = "d", "r", "t", -1, 0, 1

    def __init__(self):
        self.xcom = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def deferred_trigger(conn_id: str, state: _Store, **kwargs) -> KakaoPoseJobTrigger:
    from airflow_provider_kakaopose._compat import TaskDeferred
    from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

    op = KakaoPoseVideoOperator(
        task_id="v", video=VIDEO_URL, deferrable=True, timeout=120, kakao_pose_conn_id=conn_id, **kwargs
    )
    with pytest.raises(TaskDeferred) as info:
        op.execute({"ti": _TI(), "task_state_store": state})
    return info.value.trigger


async def test_the_video_operator_asks_for_our_callback_and_its_wait_listens(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0.5, job_processing_s=1.0)
    state = _Store()
    trigger = await asyncio.to_thread(deferred_trigger, conn_id, state, callback_poll_interval=600)
    assert trigger.callback is True and trigger.callback_poll_interval == 600
    assert "token" not in repr(trigger.serialize()) and SECRET[3:] not in repr(trigger.serialize())
    [post] = [r for r in emulator.requests if r.method == "POST"]
    assert post.fields["callback_url"].startswith(f"{receiver}/kakao-pose-callbacks/job-ended?token=v1.k1.")
    job = next(iter(state.values()))["job"]
    assert job["callback_requested"] is True and job["callback_url"] is None
    assert trigger.callback_nonce == job["callback_nonce"] and trigger.callback_nonce in post.fields["callback_url"]
    assert "token" not in repr(state)
    assert job_gets(emulator, trigger.job_id) == 0  # deferred without a status GET: its end will be called back
    [event] = await wait_all([trigger])
    assert event["status"] == "success" and job_gets(emulator, trigger.job_id) == 1  # the confirming GET


def test_a_retry_reattaches_and_still_listens(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=5, job_processing_s=5)
    state = _Store()
    first = deferred_trigger(conn_id, state)
    second = deferred_trigger(conn_id, state)
    assert first.job_id == second.job_id and second.callback is True
    assert emulator.count(method="POST", path="/pose/job") == 1


def logged(capsys, caplog) -> str:
    """What the operator logged (the task logger prints through structlog on Airflow 3; the stdlib elsewhere)."""
    out, err = capsys.readouterr()
    return out + err + (caplog.text if caplog is not None else "")


def test_a_users_callback_url_is_sent_as_given_and_the_wait_polls(emulator, make_conn, receiver, store, capsys, caplog):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=5, job_processing_s=5)
    with caplog.at_level("INFO"):
        trigger = deferred_trigger(conn_id, _Store(), callback_url="https://hooks.example.com/pose")
    assert trigger.callback is False
    [post] = [r for r in emulator.requests if r.method == "POST"]
    assert post.fields["callback_url"] == "https://hooks.example.com/pose"
    assert "callback_url was given" in logged(capsys, caplog)


def test_a_base_url_that_is_not_https_443_is_warned_about_not_refused(
    emulator, make_conn, receiver, store, capsys, caplog
):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=5, job_processing_s=5)
    with caplog.at_level("WARNING"):
        trigger = deferred_trigger(conn_id, _Store())
    text = logged(capsys, caplog)
    assert trigger.callback is True and "is not HTTPS on port 443" in text
    assert SECRET[3:] not in text and "token=" not in text


def polls_without_a_callback(emulator: Any, conn_id: str) -> None:
    """A deferrable video operator's job is submitted without a callback_url, and its trigger polls."""
    emulator.configure(job_waiting_s=5, job_processing_s=5)
    trigger = deferred_trigger(conn_id, _Store())
    assert trigger.callback is False
    [post] = [r for r in emulator.requests if r.method == "POST"]
    assert "callback_url" not in post.fields


def test_without_callback_settings_the_wait_polls_as_before(emulator, make_conn, store, monkeypatch):
    monkeypatch.delenv("AIRFLOW__KAKAO_POSE__CALLBACK_BASE_URL", raising=False)
    polls_without_a_callback(emulator, make_conn())


def test_on_airflow_2_the_operator_never_asks_for_a_callback(emulator, make_conn, receiver, store, monkeypatch, capsys):
    from airflow_provider_kakaopose import _compat

    monkeypatch.setattr(_compat, "AIRFLOW_V_3_0_PLUS", False)  # as on 2.11: no fastapi_apps, no receiver
    polls_without_a_callback(emulator, make_conn())
    assert "on Airflow 2 waits poll" in logged(capsys, None)


async def test_after_a_redis_restart_without_persistence_the_triggers_bind_again_and_callbacks_count(
    emulator, make_conn, receiver, store, monkeypatch
):
    monkeypatch.setattr(_wakeups, "RECONNECT_S", (0.1,))
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0.5, job_processing_s=2.5)
    submitted = [submit_with_nonce(conn_id, store, receiver) for _ in range(5)]
    triggers = [
        KakaoPoseJobTrigger(
            j, conn_id, end_time=time.time() + 60, callback=True, callback_poll_interval=600, callback_nonce=n
        )
        for j, n in submitted
    ]
    started = time.monotonic()
    task = asyncio.ensure_future(wait_all(triggers))
    await asyncio.sleep(0.5)
    store.stop()  # no persistence: the bindings are gone with it
    await asyncio.sleep(0.2)
    store.start()
    events = await asyncio.wait_for(task, 30)
    assert [e["status"] for e in events] == ["success"] * len(submitted)
    assert time.monotonic() - started < 10  # by their callbacks, not the 600 s fallback poll
    assert all(outcome == 200 for _, outcome in emulator.callbacks_sent)
    assert [job_gets(emulator, j) for j, _ in submitted] == [1] * len(submitted)


# ------------------------------------------------------------------------------------------------ the sensor


def submitted_without_waiting(conn_id: str, state: _Store, **kwargs) -> tuple[str, str]:
    """Submit with ``wait_for_completion=False`` (submit → sensor → load); ``(job id, the URL sent)``."""
    from airflow_provider_kakaopose.operators.pose import KakaoPoseVideoOperator

    op = KakaoPoseVideoOperator(
        task_id="submit", video=VIDEO_URL, wait_for_completion=False, kakao_pose_conn_id=conn_id, **kwargs
    )
    job_id = op.execute({"ti": _TI(), "task_state_store": state})
    return job_id, next(iter(state.values()))["job"].get("callback_nonce")


def sensor_trigger(conn_id: str, job_id: str) -> KakaoPoseJobTrigger:
    from airflow_provider_kakaopose._compat import TaskDeferred
    from airflow_provider_kakaopose.sensors.pose import KakaoPoseJobSensor

    sensor = KakaoPoseJobSensor(task_id="wait", job_id=job_id, deferrable=True, kakao_pose_conn_id=conn_id)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({"ti": _TI()})
    return info.value.trigger


async def test_a_deferrable_sensor_listens_for_a_job_that_carries_our_callback(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=0.5, job_processing_s=1.0)
    job_id, nonce = await asyncio.to_thread(submitted_without_waiting, conn_id, _Store())
    assert nonce is not None
    trigger = await asyncio.to_thread(sensor_trigger, conn_id, job_id)
    assert trigger.callback is True and trigger.callback_nonce == nonce
    assert job_gets(emulator, job_id) == 1  # the sensor's first check
    trigger.callback_poll_interval = 600
    started = time.monotonic()
    [event] = await wait_all([trigger])
    assert event["status"] == "success" and time.monotonic() - started < 8
    assert job_gets(emulator, job_id) == 2  # and the trigger's one confirming GET


def test_a_deferrable_sensor_polls_a_job_without_our_callback(emulator, make_conn, receiver, store):
    conn_id = make_conn()
    emulator.configure(job_waiting_s=5, job_processing_s=5)
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    trigger = sensor_trigger(conn_id, job_id)
    assert trigger.callback is False and trigger.callback_nonce is None
