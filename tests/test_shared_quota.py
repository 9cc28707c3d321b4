"""One quota across processes through Redis: sync threads and event loops in several processes, store down."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import subprocess
import sys
import time

import pytest
from conftest import API_KEY, free_port, redis_server_binary
from test_rate_limiter import bunched, busiest_window

from airflow_provider_kakaopose.hooks import _shared_quota
from airflow_provider_kakaopose.hooks._client import ConnSettings, RateLimiter, new_rate_limiter
from airflow_provider_kakaopose.hooks._shared_quota import SharedQuota, bucket_key

RATE = 20.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on a free loopback port (no persistence), for this module's tests."""
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/1"
    proc.kill()
    proc.wait()


def fresh_key() -> str:
    return bucket_key("http://test", f"key-{time.monotonic_ns()}")


def keeping_the_whole_log(quota: SharedQuota) -> SharedQuota:
    """The store drops entries once they left every window; a test keeps them, to check the log afterwards."""
    quota._args[0] = 3_600_000_000
    return quota


def _sync_worker(url: str, key: str, threads: int, each: int, out: multiprocessing.Queue) -> None:
    import threading

    quota = keeping_the_whole_log(SharedQuota(url, key, RATE))
    times: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(each):
            assert quota.acquire()
            with lock:
                times.append(time.time())

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(times)


def _async_worker(url: str, key: str, tasks: int, each: int, out: multiprocessing.Queue) -> None:
    async def main() -> list[float]:
        quota = keeping_the_whole_log(SharedQuota(url, key, RATE))
        times: list[float] = []

        async def run() -> None:
            for _ in range(each):
                assert await quota.acquire_async()
                times.append(time.time())

        await asyncio.gather(*(run() for _ in range(tasks)))
        return times

    out.put(asyncio.run(main()))


def admitted(url: str, key: str) -> list[float]:
    """The times (s, Redis's clock) at which the store admitted requests: the guarantee holds on these."""
    import redis

    return sorted(score / 1e6 for _, score in redis.Redis.from_url(url).zrange(key, 0, -1, withscores=True))


def run_processes(targets: list[tuple]) -> list[float]:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate workers
    out = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, out)) for fn, *args in targets]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    return sorted(times)


def test_threads_and_event_loops_in_several_processes_share_one_quota(redis_url):
    """Two processes with 4 threads each and two with 8 coroutines each, all on one 20/s quota: together
    never more than 20 in any second nor three within one spacing, and close to 20/s overall."""
    key = fresh_key()
    times = run_processes(
        [
            (_sync_worker, redis_url, key, 4, 5),
            (_sync_worker, redis_url, key, 4, 5),
            (_async_worker, redis_url, key, 8, 3),
            (_async_worker, redis_url, key, 8, 3),
        ]
    )
    assert len(times) == 2 * 4 * 5 + 2 * 8 * 3  # 88 requests
    log = admitted(redis_url, key)
    assert len(log) == len(times)
    assert busiest_window(log) <= RATE  # what it promises: never more than the rate in any one second
    assert bunched(log, 1 / RATE) == 0
    # Seen by the callers (each timed after its acquire returned, in four processes): the same within the jitter
    # of a busy machine; the store's margin is there for that jitter.
    assert busiest_window(times) <= RATE + 1
    span = times[-1] - times[0]
    assert span >= (len(times) - RATE - 1) / RATE  # the quota held: ~3.4 s at least
    assert span <= 1.5 * len(times) / RATE  # and was used: not much slower than 20/s


def test_callers_are_served_in_order_with_one_call_each(redis_url):
    """Each caller reserves its slot with one call and sleeps until it: no caller asks again and again (a herd
    of waiters would load Redis and the workers' CPUs), and the order of asking is the order of sending."""
    import threading

    quota = keeping_the_whole_log(SharedQuota(redis_url, fresh_key(), RATE))
    calls = 0
    script = quota._sync_script()

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return script(*args, **kwargs)

    quota._script = counting
    waits: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        wait = quota.wait_time()
        with lock:
            waits.append(wait)
        time.sleep(wait)

    threads = [threading.Thread(target=run) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == 30
    log = admitted(redis_url, quota.key)
    assert len(log) == 30
    assert busiest_window(log) <= RATE and bunched(log, 1 / RATE) == 0
    assert max(waits) >= (30 - RATE) / RATE * 0.9  # the later callers were given later slots, not refused


async def test_waiting_on_the_store_never_blocks_the_loop(redis_url):
    quota = SharedQuota(redis_url, fresh_key(), RATE)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    await quota.acquire_async()  # the first use imports redis.asyncio and loads the script
    beat = asyncio.ensure_future(heartbeat())
    await asyncio.gather(*(quota.acquire_async() for _ in range(30)))
    stop.set()
    await beat
    assert max(gaps) < 0.1


def test_store_down_falls_back_to_local_pacing_with_one_warning(caplog, monkeypatch):
    """An unreachable store costs a connect timeout once per RETRY_AFTER_S, and one WARNING per process; the
    local pace still holds."""
    monkeypatch.setattr(_shared_quota, "RETRY_AFTER_S", 0.5)
    url = f"redis://127.0.0.1:{free_port()}/1"  # nobody listens
    limiter = RateLimiter(RATE, shared=SharedQuota(url, fresh_key(), RATE))
    caplog.set_level(logging.DEBUG, logger=_shared_quota.__name__)
    start = time.monotonic()
    for _ in range(30):
        limiter.acquire()
    elapsed = time.monotonic() - start
    sent = limiter.sent_times()
    assert busiest_window(sent) <= RATE and bunched(sent, 1 / RATE) == 0
    assert elapsed < 3.0  # 30 at 20/s locally (~1.45 s) plus a few fast connection refusals
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "paces itself alone" in warnings[0].getMessage()
    assert "127.0.0.1" in warnings[0].getMessage()


async def test_store_down_async_falls_back_too(monkeypatch):
    url = f"redis://127.0.0.1:{free_port()}/1"
    quota = SharedQuota(url, fresh_key(), RATE)
    start = time.monotonic()
    assert await quota.acquire_async() is False
    assert not quota.available and time.monotonic() - start < 2.0
    assert await quota.acquire_async() is False  # no new attempt until RETRY_AFTER_S has passed


def test_the_store_is_found_again_after_an_outage(redis_url, monkeypatch):
    monkeypatch.setattr(_shared_quota, "RETRY_AFTER_S", 0.2)
    quota = SharedQuota(redis_url, fresh_key(), RATE)
    quota._lost(ConnectionError("simulated outage"))
    assert quota.wait_time() is None  # still considered down
    time.sleep(0.25)
    assert quota.wait_time() == 0.0  # tried again, and it answers


def test_the_store_comes_from_airflow_config_and_keeps_no_key(redis_url, monkeypatch):
    import redis

    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE", redis_url)
    settings = ConnSettings(base_url="http://127.0.0.1:1", api_key=API_KEY, rate_limit_per_second=RATE)
    limiter = new_rate_limiter(settings)
    assert limiter.shared is not None and limiter.shared.url == redis_url
    limiter.acquire()
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("*")
    assert keys and all(API_KEY.encode() not in k for k in keys)
    for k in keys:
        members = client.zrange(k, 0, -1)
        assert all(API_KEY.encode() not in m for m in members)
    no_rate = ConnSettings(base_url="http://127.0.0.1:1", api_key=API_KEY)
    assert new_rate_limiter(no_rate).shared is None  # no rate: nothing to share
    monkeypatch.delenv("AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE")
    assert new_rate_limiter(settings).shared is None  # no store: each process alone, as before


def test_provider_info_declares_the_option():
    from airflow_provider_kakaopose.get_provider_info import get_provider_info

    option = get_provider_info()["config"]["kakao_pose"]["options"]["rate_limit_store"]
    assert option["default"] == "" and option["example"].startswith("redis://")
    json.dumps(option)


def _hook_worker(threads: int, each: int, out: multiprocessing.Queue) -> None:
    """One "worker": a KakaoPoseHook analysing images from several threads, like an image batch."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

    hook = KakaoPoseHook("kakao_pose_shared")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: hook.analyze_image(image_url=f"https://example.com/{n}.jpg"), range(threads * each)))
    out.put([])


def test_hooks_in_several_processes_stay_under_the_service_quota(redis_url, monkeypatch, tmp_path):
    """Three processes with four threads each, against an emulator (own process) whose quota is 10/s with
    300 ms latency, the connection limited to 10/s and the store shared: no quota refusal, and never more than
    10 arrivals in any second. (Without the store each process alone would send up to 10/s: 30/s together.)"""
    import requests

    from airflow_provider_kakaopose.emulator.process import EmulatorProcess

    with EmulatorProcess(
        sys.executable, "--quota-per-second", "10", "--latency", "0.3", api_key=API_KEY, startup_timeout=60
    ) as emulator:
        conn = {"conn_type": "kakao_pose", "host": emulator.base_url, "password": API_KEY}
        conn["extra"] = {"rate_limit_per_second": 10, "max_retries": 5, "retry_wait_initial": 0.2}
        monkeypatch.setenv("AIRFLOW_CONN_KAKAO_POSE_SHARED", json.dumps(conn))
        monkeypatch.setenv("AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE", redis_url)
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
        start = time.monotonic()
        run_processes([(_hook_worker, 4, 5)] * 3)
        elapsed = time.monotonic() - start
        recorded = requests.get(f"{emulator.base_url}/_emulator/requests", timeout=30).json()
    posts = [r for r in recorded if r["method"] == "POST"]
    assert len(posts) == 60
    assert [r for r in posts if r["status"] != 200] == []  # no quota refusal, no retry needed
    assert busiest_window(sorted(r["time"] for r in posts)) <= 10
    assert elapsed >= 5.0  # 60 requests at 10/s (plus starting three interpreters)
