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
from helpers import API_KEY, free_port, local_redis, loop_gaps
from test_rate_limiter import bunched, busiest_window

from airflow_provider_kakaopose.hooks import _shared_quota
from airflow_provider_kakaopose.hooks._client import ConnSettings, RateLimiter, new_rate_limiter
from airflow_provider_kakaopose.hooks._shared_quota import SharedQuota, bucket_key

RATE = 20.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on a free loopback port (no persistence), for this module's tests."""
    server = local_redis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


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
    await quota.acquire_async()  # the first use imports redis.asyncio and loads the script
    async with loop_gaps() as gaps:
        await asyncio.gather(*(quota.acquire_async() for _ in range(30)))
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


# ------------------------------------------------------------------ the store's clock steps back (issue 20, item 7)

#: A backwards step of Redis's clock, as simulated below (a Redis host's clock corrected, a failover to a replica
#: whose clock is behind).
STEP_S = 30.0


def redis_now_us(url: str) -> int:
    """Redis's own clock (``TIME``), in µs: the clock the store's log is scored by."""
    import redis

    seconds, micros = redis.Redis.from_url(url).time()
    return seconds * 1_000_000 + micros


def step_the_clock_back(url: str, key: str, seconds: float = STEP_S) -> int:
    """Make ``key``'s log look as it does once Redis's ``TIME`` stepped back ``seconds``: the last second's
    reservations at RATE (scored by the old clock) now lie ``seconds`` ahead of ``TIME``. Returns that now."""
    import redis

    now = redis_now_us(url)
    spacing = int(1_000_000 / RATE)
    first = now + int(seconds * 1_000_000) - 1_000_000  # the log kept about the last second before the step
    entries = {f"{first + i * spacing}:{i:012x}": first + i * spacing for i in range(int(RATE))}
    client = redis.Redis.from_url(url)
    client.zadd(key, entries)
    client.pexpire(key, int(seconds * 1000) + 2000)  # what the script set: the log lives until its last slot
    return now


def test_a_clock_stepped_back_costs_no_wait_and_the_log_is_repaired(redis_url, caplog):
    """After a 30 s backwards step, the old script gave every caller a slot after the 30-s-ahead log (and
    every later caller after that one): the first caller now sends at once, the log is repaired (nothing left
    ahead of now by more than a window), one warning says so, and the pace holds again right away."""
    key = fresh_key()
    step_the_clock_back(redis_url, key)
    quota = SharedQuota(redis_url, key, RATE)
    caplog.set_level(logging.DEBUG, logger=_shared_quota.__name__)
    wait = quota.wait_time()
    assert wait is not None and wait < 1.0, f"waited {wait:.1f} s after a {STEP_S:.0f}-s backwards step"
    horizon = redis_now_us(redis_url) + 2 * 1_150_000
    assert all(score * 1e6 <= horizon for score in admitted(redis_url, key))  # the entries ahead are gone
    start = time.monotonic()
    for _ in range(30):
        assert quota.acquire()
    elapsed = time.monotonic() - start
    assert elapsed < 3.0  # 30 at 20/s: ~1.5 s, not 30 s
    log = [t for t in admitted(redis_url, key)]
    assert busiest_window(log) <= RATE and bunched(log, 1 / RATE) == 0  # and the quota holds again
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stepped back" in warnings[0], warnings


async def test_a_clock_stepped_back_never_holds_a_trigger(redis_url):
    """The same on an event loop, asserted with a timeout: the old code slept the whole step."""
    key = fresh_key()
    step_the_clock_back(redis_url, key)
    quota = SharedQuota(redis_url, key, RATE)
    start = time.monotonic()
    assert await asyncio.wait_for(quota.acquire_async(), timeout=5.0)
    assert time.monotonic() - start < 1.0


def test_a_long_legitimate_queue_is_kept(redis_url, caplog):
    """The repair must not take a deep queue for a broken clock: 300 callers at once on 20/s get slots up to
    ~17 s ahead (far beyond any window), and every one of them is kept, in order, without a warning."""
    key = fresh_key()
    quota = SharedQuota(redis_url, key, RATE)
    caplog.set_level(logging.DEBUG, logger=_shared_quota.__name__)
    waits = [quota.wait_time() for _ in range(300)]
    assert all(w is not None for w in waits)
    assert max(waits) >= (300 - RATE) / RATE  # the last ones ~15-17 s ahead
    log = admitted(redis_url, key)
    assert len(log) == 300 and busiest_window(log) <= RATE and bunched(log, 1 / RATE) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_wait_beyond_the_cap_paces_locally_with_one_warning(redis_url, monkeypatch, caplog):
    """The client's own bound: a slot further away than MAX_WAIT_WINDOWS windows (a store that is broken in a
    way the script cannot see) is not taken; that request paces itself alone, and one warning says so."""
    monkeypatch.setattr(_shared_quota, "MAX_WAIT_WINDOWS", 1)
    key = fresh_key()
    quota = SharedQuota(redis_url, key, RATE)
    assert quota.max_wait == 1.15  # one window: 1 s + the margin
    caplog.set_level(logging.DEBUG, logger=_shared_quota.__name__)
    waits = [quota.wait_time() for _ in range(60)]
    taken = [w for w in waits if w is not None]
    assert len(taken) >= RATE and all(w <= quota.max_wait for w in taken)
    assert waits[len(taken) :] == [None] * (60 - len(taken))  # the queue beyond 1.15 s is paced locally
    assert len(admitted(redis_url, key)) == len(taken)  # and leaves no slot nobody will use
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "paces itself alone" in warnings[0], warnings
    assert quota.available  # the store itself is fine: the next request asks it again


# ------------------------------------------------------------------------ unusable store URLs (issue 20, item 8)

#: A password that must never show in a log.
STORE_PASSWORD = "s3cret-store-pw"

UNUSABLE_STORES = {
    "port typo": f"redis://:{STORE_PASSWORD}@127.0.0.1:6379x/1",
    "wrong scheme": f"http://:{STORE_PASSWORD}@127.0.0.1:6379/1",
    "empty host": f"redis://:{STORE_PASSWORD}@/1",
    "database not a number": f"redis://:{STORE_PASSWORD}@127.0.0.1:6379/one",
    "no slashes": f"redis:{STORE_PASSWORD}@127.0.0.1:6379",
    "garbage": f"{STORE_PASSWORD} is not a url",
    "bad IPv6": f"redis://:{STORE_PASSWORD}@[::1/1",
}


@pytest.mark.parametrize("url", UNUSABLE_STORES.values(), ids=UNUSABLE_STORES.keys())
def test_an_unusable_store_url_means_local_pacing_and_one_warning(url, monkeypatch, caplog):
    """A typo in the store URL must not fail the batch: the documented local pacing, one warning per URL (not
    per hook, nor per request), never the password."""
    monkeypatch.setenv("AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE", url)
    caplog.set_level(logging.DEBUG)
    settings = ConnSettings(base_url="http://127.0.0.1:1", api_key=API_KEY, rate_limit_per_second=RATE)
    sent = []
    for _ in range(3):  # three hooks in one process
        limiter = new_rate_limiter(settings)
        for _ in range(4):
            limiter.acquire()  # the old code raised ValueError here, from the URL parser in the fallback path
        sent += limiter.sent_times()
        assert limiter.shared is None  # nothing tries the URL again
    assert len(sent) == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "paces itself alone" in warnings[0], warnings
    assert STORE_PASSWORD not in caplog.text


@pytest.mark.parametrize("url", UNUSABLE_STORES.values(), ids=UNUSABLE_STORES.keys())
def test_a_quota_made_with_an_unusable_url_falls_back_too(url, caplog):
    """Even made directly (not through the config), a quota on an unusable URL paces locally and never
    raises; its warning shows no password."""
    caplog.set_level(logging.DEBUG)
    quota = SharedQuota(url, fresh_key(), RATE)
    assert quota.acquire() is False
    assert STORE_PASSWORD not in caplog.text


@pytest.mark.parametrize(
    "url", [*UNUSABLE_STORES.values(), f"redis://user:{STORE_PASSWORD}@host:6379/2", "", "://", "redis://[", "\x00"]
)
def test_the_url_shown_in_logs_never_raises_nor_has_the_password(url):
    shown = _shared_quota._safe_url(url)
    assert isinstance(shown, str) and STORE_PASSWORD not in shown


def test_the_url_shown_in_logs_keeps_what_helps():
    assert (
        _shared_quota._safe_url(f"rediss://:{STORE_PASSWORD}@redis.internal:6380/1") == "rediss://redis.internal:6380/1"
    )


# --------------------------------------------------------- a sensitive option: _CMD, _SECRET, masking (item 12)


def fresh_airflow_env(tmp_path, **env: str) -> dict[str, str]:
    """An environment with a fresh AIRFLOW_HOME (its own config: nothing of this session's but the import
    path) plus ``env``."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    return {**base, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **env}


def run_in_fresh_airflow(code: str, tmp_path, **env: str) -> str:
    """Run ``code`` in a new interpreter with :func:`fresh_airflow_env`; return its stdout's last line."""
    env = fresh_airflow_env(tmp_path, **env)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


READ_THE_STORE = """
import json
from airflow_provider_kakaopose.hooks._shared_quota import configured_store, shared_quota
url = configured_store()
quota = shared_quota("http://test", "key", 20.0)
print(json.dumps({"url": url, "wait": quota.wait_time() if quota else None}))
"""


def test_the_store_url_can_come_from_a_command(redis_url, tmp_path):
    """``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE_CMD``, as for Celery's broker URL: the command's output is the
    store, and the quota uses it."""
    out = json.loads(
        run_in_fresh_airflow(READ_THE_STORE, tmp_path, AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE_CMD=f"echo {redis_url}")
    )
    assert out == {"url": redis_url, "wait": 0.0}


SECRETS_BACKEND = '''
from airflow.secrets import BaseSecretsBackend


class StoreFromSecrets(BaseSecretsBackend):
    """A secrets backend that knows one config value, under the path the _SECRET variable names."""

    def __init__(self, url):
        super().__init__()
        self.url = url

    def get_config(self, key):
        return self.url if key == "kakao_pose/rate_limit_store" else None

    def get_conn_value(self, conn_id, team_name=None):
        return None
'''


def test_the_store_url_can_come_from_the_secrets_backend(redis_url, tmp_path):
    """``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE_SECRET``: the value is read from the configured secrets backend."""
    import os

    (tmp_path / "store_secrets.py").write_text(SECRETS_BACKEND)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "AIRFLOW__SECRETS__BACKEND": "store_secrets.StoreFromSecrets",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"url": redis_url}),
        "AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE_SECRET": "kakao_pose/rate_limit_store",
    }
    out = json.loads(run_in_fresh_airflow(READ_THE_STORE, tmp_path, **env))
    assert out == {"url": redis_url, "wait": 0.0}


SENSITIVE = f"""
import json
from airflow_provider_kakaopose._compat import conf
from airflow_provider_kakaopose.hooks._shared_quota import configured_store
from airflow.providers.common.compat.sdk import redact
url = configured_store()
print(json.dumps({{
    "url": url,
    "sensitive": ["kakao_pose", "rate_limit_store"] in [list(x) for x in conf.sensitive_config_values],
    "shown": conf.as_dict(display_source=False, display_sensitive=False)["kakao_pose"]["rate_limit_store"],
    "redacted": redact("AUTH failed with {STORE_PASSWORD}"),
}}))
"""


def test_the_store_option_is_sensitive_and_its_password_masked(tmp_path):
    """The option is known to Airflow as sensitive (so the non-sensitive config view hides it), and the
    password alone — as a Redis error could show it — is registered with the secrets masker once read."""
    url = f"redis://:{STORE_PASSWORD}@127.0.0.1:6379/1"
    out = json.loads(run_in_fresh_airflow(SENSITIVE, tmp_path, AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE=url))
    assert out["url"] == url and out["sensitive"] is True
    assert STORE_PASSWORD not in out["shown"]
    assert STORE_PASSWORD not in out["redacted"]


def test_airflow_config_list_hides_the_store(tmp_path):
    """``airflow config list --show-values --hide-sensitive`` (what may be shared) does not show the URL."""
    import os
    import shutil

    from airflow.cli import cli_config

    if not hasattr(cli_config, "ARG_CONFIG_SHOW_VALUES"):
        pytest.skip("this Airflow's `config list` always shows every value (its API hides sensitive ones: above)")
    airflow = shutil.which("airflow", path=os.path.dirname(sys.executable))
    assert airflow
    url = f"redis://:{STORE_PASSWORD}@127.0.0.1:6379/1"
    env = fresh_airflow_env(tmp_path, AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE=url)
    args = [airflow, "config", "list", "--section", "kakao_pose", "--show-values", "--hide-sensitive"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rate_limit_store" in proc.stdout
    assert STORE_PASSWORD not in proc.stdout + proc.stderr
