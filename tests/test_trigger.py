"""KakaoPoseJobTrigger against the emulator: events, deadline, serialization, event-loop hygiene."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from helpers import API_KEY, loop_gaps

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
        "callback": False,
        "callback_poll_interval": None,
        "callback_nonce": None,
        "waiting_since": None,
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
    # A first wait outside the measurement: one-time costs (imports, the async connection look-up's first use)
    # are paid once per triggerer process, not per poll; they once showed as a single 0.19 s step on a busy CI.
    await events_of(KakaoPoseJobTrigger(job_ids[0], conn_id, poll_interval=0.1, end_time=time.time() + 30))
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
    async with loop_gaps() as gaps:
        tracemalloc.start()
        try:
            [event] = await events_of(KakaoPoseJobTrigger(job_id, "kakao_pose_big", poll_interval=1))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
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


# ------------------------------------------------------------------------------ a wait you can watch


class FakeClock:
    """Drives :mod:`airflow_provider_kakaopose._waitlog`'s clocks: ``advance`` moves both."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, wall: float = 1_767_261_600.0) -> None:  # 2026-01-01 10:00Z
        from airflow_provider_kakaopose import _waitlog

        self.mono, self.wall = 1000.0, wall
        monkeypatch.setattr(_waitlog, "_monotonic", lambda: self.mono)
        monkeypatch.setattr(_waitlog, "_wall", lambda: self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class Lines:
    """A logger that keeps the lines (and the fake clock's time of each)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.lines, self.times = clock, [], []

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(msg % args)
        self.times.append(self.clock.mono - 1000.0)


@pytest.mark.parametrize(
    ("poll", "every"),
    [(0.1, 10), (1, 10), (2, 10), (3.3, 10), (5, 15), (10, 30), (20, 60), (30, 60), (60, 60), (120, 120), (600, 600)],
)
def test_the_status_rhythm_for_any_poll_interval(poll, every):
    """Every third poll, never more often than every 10 s, at least once a minute (or every poll beyond)."""
    from airflow_provider_kakaopose._waitlog import log_every

    assert log_every(poll) == pytest.approx(every)


@pytest.mark.parametrize("poll", [0.5, 1, 2, 5, 10, 30, 120])
def test_a_long_wait_logs_at_a_steady_rhythm_with_a_fake_clock(monkeypatch, poll):
    """An hour of ``processing`` polled every ``poll`` seconds: a line at the first poll, then one each time
    the rhythm's interval has passed — never two closer than 10 s (nor than a poll), never a gap longer than
    the interval plus one poll — and the end at once."""
    from airflow_provider_kakaopose._waitlog import WaitLog, log_every

    clock = FakeClock(monkeypatch)
    log = Lines(clock)
    wait = WaitLog(log, "j", clock.wall + 7200, poll)
    for _ in range(int(3600 / poll)):
        wait.log("processing")
        clock.advance(poll)
    wait.log("success")
    every = log_every(poll)
    gaps = [b - a for a, b in zip(log.times, log.times[1:-1], strict=False)]
    assert log.times[0] == 0
    assert min(gaps) >= max(10.0, poll) - 1e-6 and max(gaps) <= every + poll + 1e-6
    assert len(log.lines) == pytest.approx(3600 / (poll * -(-every // poll)) + 1, abs=2)
    assert log.lines[-1] == "Pose job j is success: waited 1 h 00 m"


def test_the_status_line_says_how_long_and_until_when(monkeypatch):
    from airflow_provider_kakaopose._waitlog import WaitLog

    clock = FakeClock(monkeypatch)
    log = Lines(clock)
    wait = WaitLog(log, "4a6f", clock.wall + 1800, poll_interval=1)
    assert wait.log("waiting")
    clock.advance(0.4)
    assert wait.log("processing")  # a change: at once
    clock.advance(5)
    assert not wait.log("processing")  # 5 s after the last line: nothing
    clock.advance(94.6)
    assert wait.log("processing")
    clock.advance(3)
    assert wait.log("failed")
    assert log.lines == [
        "Pose job 4a6f is waiting: waited 0 s, deadline 2026-01-01T10:30:00Z (in 30 m 00 s)",
        "Pose job 4a6f is processing: waited 0 s, deadline 2026-01-01T10:30:00Z (in 30 m 00 s)",
        "Pose job 4a6f is processing: waited 1 m 40 s, deadline 2026-01-01T10:30:00Z (in 28 m 20 s)",
        "Pose job 4a6f is failed: waited 1 m 43 s",
    ]
    # Without a deadline, and past it.
    no_deadline = WaitLog(log, "x", None, 1)
    no_deadline.log("processing")
    assert log.lines[-1] == "Pose job x is processing: waited 0 s, no deadline"
    late = WaitLog(log, "y", clock.wall - 5, 1)
    late.log("processing")
    assert log.lines[-1].endswith("(in 0 s)")
    # Hours.
    clock.advance(2 * 3600 + 5 * 60)
    late.log("processing")
    assert "waited 2 h 05 m" in log.lines[-1]


def test_the_wait_log_is_a_few_slots():
    """A triggerer holds thousands of waits: no per-instance dict, a few references and floats."""
    import sys

    from airflow_provider_kakaopose._waitlog import WaitLog

    wait = WaitLog(logging.getLogger("x"), "j", 1.0, 1.0)
    assert not hasattr(wait, "__dict__")
    assert sys.getsizeof(wait) <= 100


def log_text(capsys, caplog) -> str:
    """What a task's or trigger's log shows: structlog prints it on Airflow 3, logging records it on 2."""
    printed = capsys.readouterr().out
    recorded = "\n".join(r.getMessage() for r in caplog.records)
    return printed if len(printed) > len(recorded) else recorded


def status_lines(text: str, job_id: str) -> list[str]:
    return [line for line in text.splitlines() if f"Pose job {job_id} is " in line]


async def test_a_trigger_waiting_25_s_logs_its_status_every_10_s(emulator, make_conn, capsys, caplog):
    """A job processing ~25 s polled every second: the trigger logs its status at INFO at 0 s, 10 s and 20 s
    and when it ends — not at each of the ~25 polls (it used to log them at DEBUG only: nothing at INFO)."""
    caplog.set_level(logging.INFO)
    emulator.configure(job_waiting_s=0, job_processing_s=25)
    conn_id = make_conn()
    job_id = KakaoPoseHook(conn_id).submit_video_job(video_url=VIDEO_URL)
    capsys.readouterr()
    [event] = await events_of(KakaoPoseJobTrigger(job_id, conn_id, poll_interval=1, end_time=time.time() + 600))
    assert event["status"] == "success"
    lines = status_lines(log_text(capsys, caplog), job_id)
    processing = [line for line in lines if " is processing: waited " in line]
    assert len(processing) == 3, lines  # 0 s, 10 s, 20 s
    assert [line for line in lines if " is success: waited 2" in line], lines  # and the end (25-26 s)
    assert len(lines) == 4, lines
    assert all("deadline 20" in line for line in processing)
    assert emulator.count(method="GET") >= 20  # while it polled every second
