"""KakaoPoseJobTrigger against the emulator: events, deadline, serialization, event-loop hygiene."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from conftest import API_KEY

from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook
from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

VIDEO_URL = "https://example.com/walk.mp4?frames=5"


async def events_of(trigger: KakaoPoseJobTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def test_serialize_round_trip_has_only_ids_and_settings(make_conn):
    conn_id = make_conn()
    trigger = KakaoPoseJobTrigger("job-1", conn_id, poll_interval=3, end_time=1_900_000_000.5)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_kakaopose.triggers.pose.KakaoPoseJobTrigger"
    assert kwargs == {
        "job_id": "job-1",
        "kakao_pose_conn_id": conn_id,
        "poll_interval": 3.0,
        "end_time": 1_900_000_000.5,
    }
    assert API_KEY not in repr(kwargs)
    again = KakaoPoseJobTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)


async def test_success_event_never_carries_the_result(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    trigger = KakaoPoseJobTrigger(job_id, conn_id, poll_interval=0.1, end_time=time.time() + 30)
    [event] = await events_of(trigger)
    assert event == {"status": "success", "job_id": job_id, "message": f"Job {job_id} succeeded"}
    polls = emulator.count(method="GET")
    assert 3 <= polls <= 12  # ~0.6 s of job at 0.1 s intervals: polling, not a busy loop


async def test_failed_event_has_the_service_description(emulator, make_conn):
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url="https://unreachable.example.com/v.mp4")
    [event] = await events_of(KakaoPoseJobTrigger(job_id, conn_id, poll_interval=0.1, end_time=time.time() + 30))
    assert event["status"] == "failed"
    assert "Failed to get video" in event["message"]


async def test_not_found_event(emulator, make_conn):
    [event] = await events_of(KakaoPoseJobTrigger("nope", make_conn(), poll_interval=0.1, end_time=time.time() + 30))
    assert event["status"] == "not found" and event["job_id"] == "nope"


async def test_timeout_at_the_absolute_deadline(emulator, make_conn):
    emulator.configure(job_processing_s=60)
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    start = time.monotonic()
    [event] = await events_of(KakaoPoseJobTrigger(job_id, conn_id, poll_interval=0.2, end_time=time.time() + 0.7))
    elapsed = time.monotonic() - start
    assert event["status"] == "timeout"
    assert "still" in event["message"]
    assert 0.6 <= elapsed < 2.0


async def test_past_deadline_checks_once_then_times_out(emulator, make_conn):
    """A trigger re-created after its deadline (e.g. by a new triggerer) reports at once."""
    emulator.configure(job_processing_s=60)
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    emulator.clear_requests()
    [event] = await events_of(KakaoPoseJobTrigger(job_id, conn_id, poll_interval=5, end_time=time.time() - 1))
    assert event["status"] == "timeout"
    assert emulator.count() == 1


async def test_errors_become_one_error_event(emulator, make_conn):
    events = await events_of(KakaoPoseJobTrigger("x", make_conn(password="bad-key-1"), poll_interval=0.1))
    assert len(events) == 1 and events[0]["status"] == "error"
    assert "-401" in events[0]["message"] and "bad-key-1" not in events[0]["message"]
    emulator.script_faults(["500"] * 10)
    [event] = await events_of(KakaoPoseJobTrigger("x", make_conn(max_retries=1), poll_interval=0.1))
    assert event["status"] == "error" and "HTTP 500" in event["message"]


async def test_resumes_from_serialized_form(emulator, make_conn):
    """A trigger cancelled mid-wait and re-created from serialize() finishes the same job."""
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    first = KakaoPoseJobTrigger(job_id, conn_id, poll_interval=0.1, end_time=time.time() + 30)
    gen = first.run()
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0.15)
    task.cancel()  # the triggerer died
    with pytest.raises(asyncio.CancelledError):
        await task
    _, kwargs = first.serialize()
    [event] = await events_of(KakaoPoseJobTrigger(**kwargs))
    assert event["status"] == "success" and event["job_id"] == job_id
    assert emulator.count(method="POST") == 1


async def test_never_blocks_the_event_loop(emulator, make_conn, caplog):
    """asyncio debug mode reports any callback that holds the loop for more than 50 ms."""
    conn_id = make_conn()
    job_ids = [KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL) for _ in range(5)]
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        results = await asyncio.gather(
            *(events_of(KakaoPoseJobTrigger(j, conn_id, poll_interval=0.1, end_time=time.time() + 30)) for j in job_ids)
        )
    finally:
        loop.set_debug(False)
    assert all(r[0]["status"] == "success" for r in results)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, slow


async def test_slow_callback_detection_works(caplog):
    """The check above can fail: a blocking sleep in a coroutine is reported."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def blocking():
        time.sleep(0.1)

    try:
        await asyncio.ensure_future(blocking())
        await asyncio.sleep(0)
    finally:
        loop.set_debug(False)
    assert any("took" in r.getMessage() for r in caplog.records if r.name == "asyncio")


def test_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_interval"):
        KakaoPoseJobTrigger("x", poll_interval=0)


async def test_triggers_on_one_loop_share_a_session_and_a_rate_limit(emulator, make_conn):
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook

    conn_id = make_conn(rate_limit_per_second=20)
    a, b = KakaoPoseAsyncHook(conn_id), KakaoPoseAsyncHook(conn_id)
    async with a, b:
        assert a._session is b._session
        session = a._session
        await asyncio.gather(a.get_job("x"), b.get_job("y"))
        assert a._rate_limiter is b._rate_limiter
    assert session.closed  # closed when its last user left
    # Twenty triggers polling together still respect the connection's 20/s.
    start = time.monotonic()
    events = await asyncio.gather(
        *(events_of(KakaoPoseJobTrigger(f"n{i}", conn_id, poll_interval=1)) for i in range(30))
    )
    assert all(e[0]["status"] == "not found" for e in events)
    assert time.monotonic() - start >= 1.3  # 32 requests at 20/s


async def test_a_large_result_neither_blocks_the_loop_nor_stays_in_memory(big_job, monkeypatch):
    """Polling a finished job whose body is the whole result: a heartbeat on the same loop keeps beating, and
    the trigger holds at most a few MB (it used to parse the whole body on the loop: a 28 MB result stalled
    the heartbeat ~1 s and peaked at ~150 MB)."""
    import json
    import tracemalloc

    base_url, job_id, size = big_job
    conn = {"conn_type": "kakao_pose", "host": base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_BIG", json.dumps(conn))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(0.05)
    tracemalloc.start()
    try:
        [event] = await events_of(KakaoPoseJobTrigger(job_id, "kakao_pose_big", poll_interval=1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stop.set()
        await beat
    assert event["status"] == "success"
    assert size > 20e6
    assert peak < 8e6, f"the trigger held {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB body"
    assert max(gaps) < 0.3, f"the heartbeat stalled {max(gaps):.2f} s"


MODULES_AFTER_IMPORT = """
import sys
import {module}
print(" ".join(name for name in ("redis", "redis.asyncio", "aiohttp", "airflow_provider_kakaopose.triggers.pose")
               if name in sys.modules))
"""


def modules_after_importing(module: str) -> set[str]:
    """Which of redis, redis.asyncio, aiohttp and the trigger module a fresh interpreter holds after importing
    ``module``."""
    import os
    import subprocess
    import sys

    code = MODULES_AFTER_IMPORT.format(module=module)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return set(lines[-1].split()) if lines else set()


def test_the_trigger_module_brings_redis_asyncio():
    """The first trigger's first shared-quota call must not import redis.asyncio on the triggerer's event
    loop: it comes with the trigger module (which only the triggerer imports), as aiohttp does. (Without the
    optional redis extra, as in the version matrix's environments, there is nothing to bring.)"""
    import importlib.util

    wanted = {"redis.asyncio", "aiohttp"} if importlib.util.find_spec("redis") else {"aiohttp"}
    assert wanted <= modules_after_importing("airflow_provider_kakaopose.triggers.pose")


def test_dag_files_do_not_import_the_trigger_module():
    """Operators and sensors (what DAG files import) import the trigger lazily: DAG parsing pays for neither
    redis nor aiohttp."""
    loaded = modules_after_importing(
        "airflow_provider_kakaopose.operators.pose, airflow_provider_kakaopose.sensors.pose"
    )
    assert not loaded & {"redis", "redis.asyncio", "aiohttp", "airflow_provider_kakaopose.triggers.pose"}
