"""The client-side rate limiter under a lagging event loop and busy threads: paced, never starved."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from airflow_provider_kakaopose.hooks._client import RateLimiter


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """Most sends in any window of ``width`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def bunched(times: list[float], spacing: float) -> int:
    """How often three sends fall within one spacing (the limiter allows two at most)."""
    times = sorted(times)
    return sum(1 for a, c in zip(times, times[2:], strict=False) if c - a < spacing * 0.999)


async def lagging_loop(lag: float, stop: asyncio.Event) -> None:
    """A loop that holds the event loop ``lag`` seconds each turn, like a busy triggerer."""
    while not stop.is_set():
        end = time.perf_counter() + lag
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def test_callers_on_a_lagging_loop_are_not_starved():
    """At 100/s with ~15 ms of loop lag, twenty waiters all get through at about the pace (the limiter used to
    book a new slot whenever a caller woke more than a spacing late: 1 of 20 returned within 5 s)."""
    limiter = RateLimiter(100)
    stop = asyncio.Event()
    busy = asyncio.ensure_future(lagging_loop(0.015, stop))
    start = time.monotonic()
    done: list[float] = []

    async def one() -> None:
        await limiter.acquire_async()
        done.append(time.monotonic())

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), timeout=5)
    except TimeoutError:
        pass
    finally:
        stop.set()
        await busy
    assert len(done) == 20, f"only {len(done)} of 20 callers got through in 5 s"
    assert max(done) - start < 1.0  # ideal: 0.19 s at 100/s; lag adds a little
    assert bunched(limiter.sent_times(), 0.01) == 0
    assert limiter.sent_in_last_second() == 20  # the pace on_quota sees counts sends, not bookings


async def test_no_burst_after_the_loop_stalls():
    """Callers whose turns passed while the loop was blocked for 0.5 s do not all send at once."""
    limiter = RateLimiter(100)
    sent: list[float] = []

    async def one() -> None:
        await limiter.acquire_async()
        sent.append(time.monotonic())

    tasks = [asyncio.ensure_future(one()) for _ in range(150)]
    await asyncio.sleep(0)
    time.sleep(0.5)  # the loop is stuck while 50 turns pass
    await asyncio.gather(*tasks)
    sends = limiter.sent_times()  # when the limiter let each request go
    assert len(sends) == 150
    assert busiest_window(sends) <= 100
    assert bunched(sends, 0.01) == 0
    assert max(sent) - min(sent) >= 1.0  # 150 sends at 100/s take 1.5 s, the stall notwithstanding


def test_threads_under_a_busy_interpreter_are_paced_and_all_served():
    """Sixteen threads sharing one limiter while another thread keeps the GIL busy."""
    limiter = RateLimiter(100)
    sent: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(10_000))

    def worker() -> None:
        for _ in range(10):
            limiter.acquire()
            with lock:
                sent.append(time.monotonic())

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    stop.set()
    spinner.join()
    assert len(sent) == 160
    assert time.monotonic() - start < 5.0  # 160 at 100/s: 1.6 s ideal
    sends = limiter.sent_times()
    assert busiest_window(sends) <= 100
    assert bunched(sends, 0.01) == 0


def test_unlimited_limiter_never_waits():
    limiter = RateLimiter(None)
    start = time.monotonic()
    for _ in range(1000):
        limiter.acquire()
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("rate", [2.5, 10, 40])
def test_pace_of_actual_sends_on_a_quiet_machine(rate):
    limiter = RateLimiter(rate)
    n = int(rate * 1.5) + 1
    for _ in range(n):
        limiter.acquire()
    sent = limiter.sent_times()
    assert busiest_window(sent) <= -(-rate // 1)  # ceil(rate)
    assert sent[-1] - sent[0] >= (n - 2) / rate  # two may share the first spacing, never more
