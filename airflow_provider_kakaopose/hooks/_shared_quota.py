"""One API quota for a whole deployment: every worker thread and every triggerer's loop, through Redis.

The Pose API's quota belongs to the app key, but each process paces itself alone: two workers with eight
threads and two triggerers would together send several times ``rate_limit_per_second``. With
``[kakao_pose] rate_limit_store = redis://host:port/db`` (environment: ``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE``)
set on every component, each request also reserves a send time in a log in Redis: one sorted set per
app key, in which one Lua script reserves each request's send time (the earliest that keeps every rate), so
processes never race and callers are served in order, each with one call. Two rates hold there for all
processes together, the same as the local limiter's: at most ``ceil(rate)`` requests in any one-second window
(plus a small margin for the jitter between being admitted and arriving at the API), and no more than two
within one spacing ``1/rate``.

Why a script of our own rather than a rate-limiting library's (pyrate-limiter, limits): those stamp each
request with the *client's* clock, read before the round trip; a process descheduled between reading its clock
and reaching Redis then counts the window up to its stale "now", misses the newer entries and is let through —
measured here with four busy processes on 20/s: 21 admitted within one window. This script takes the time from
Redis itself (``TIME``), inside the atomic step, so the log is in the order Redis saw the requests.

If the store cannot be reached (or ``redis`` is not installed), the process logs one warning and paces itself
alone, as without a store; it tries the store again every :data:`RETRY_AFTER_S` seconds. The pipeline never
stops for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import threading
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: The Airflow config option naming the store (section ``kakao_pose``).
CONFIG_SECTION, CONFIG_KEY = "kakao_pose", "rate_limit_store"
#: Seconds before a process that lost the store tries it again.
RETRY_AFTER_S = 30.0
#: Added to the one-second window: requests arrive a little later than they are sent, and not all equally.
WINDOW_MARGIN_MS = 150
#: Seconds to connect to / answer from the store before it counts as unreachable.
STORE_TIMEOUT_S = 0.5


#: A few connections per process are plenty for one short script each (callers wait for a free one), and no
#: CLIENT SETINFO on connect (redis-py reads its own package metadata for it: milliseconds per connection).
_POOL_OPTIONS: dict[str, Any] = {
    "max_connections": 8,
    "timeout": STORE_TIMEOUT_S * 4,
    "socket_connect_timeout": STORE_TIMEOUT_S,
    "socket_timeout": STORE_TIMEOUT_S,
    "lib_name": None,
    "lib_version": None,
}


def configured_store() -> str | None:
    """The deployment's store URL from Airflow's config, or ``None`` (no shared quota)."""
    try:
        from airflow_provider_kakaopose._compat import conf

        value = conf.get(CONFIG_SECTION, CONFIG_KEY, fallback=None)
    except Exception:  # outside Airflow, or a config that cannot be read: no shared quota
        return None
    return value.strip() or None if isinstance(value, str) else None


def bucket_key(base_url: str, api_key: str) -> str:
    """The Redis key of one app key's quota (a digest: the key itself is never stored or logged)."""
    digest = hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:24]
    return f"kakaopose:quota:{digest}"


#: KEYS[1]: the log, a sorted set of reserved send times scored by Redis's clock (µs). ARGV: a member nonce, how
#: long to keep entries (µs, at least the longest window), then (limit, window µs) per rate. Reserves the
#: earliest time at which every rate still holds and returns the µs until it (0: send now). Slots are handed
#: out in order, so the log stays sorted and the ``limit``-th newest entry alone decides each rate; callers
#: sleep until their slot instead of asking again (first come, first served, one call per request). The key
#: expires when idle.
ACQUIRE_SCRIPT = """
local function int(x) return string.format('%.0f', x) end  -- exact: Lua's tostring keeps 14 digits
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot, longest = now, tonumber(ARGV[2])
local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if last[2] and tonumber(last[2]) > slot then slot = tonumber(last[2]) end
for i = 3, #ARGV, 2 do
  local limit, window = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if window > longest then longest = window end
  local blocking = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
  if blocking[2] and tonumber(blocking[2]) + window > slot then slot = tonumber(blocking[2]) + window end
end
redis.call('ZADD', KEYS[1], int(slot), int(slot) .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - longest))
redis.call('PEXPIRE', KEYS[1], int(math.floor((slot - now + longest) / 1000) + 1000))
return int(slot - now)
"""


def rates(rate: float) -> list[tuple[int, int]]:
    """``(limit, window µs)`` pairs for ``rate`` requests per second: two per two spacings, ``ceil(rate)`` per
    second (plus :data:`WINDOW_MARGIN_MS`)."""
    spacing_us = max(1, math.ceil(1_000_000 / rate))
    per_second = max(1, math.ceil(rate - 1e-9))
    return [(2, 2 * spacing_us), (per_second, (1000 + WINDOW_MARGIN_MS) * 1000)]


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


class SharedQuota:
    """The deployment-wide slots of one app key, taken from sync threads or from an event loop.

    :param url: the store, ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
    :param key: the Redis key (see :func:`bucket_key`).
    :param rate: requests per second for the whole deployment (the connection's ``rate_limit_per_second``).
    """

    def __init__(self, url: str, key: str, rate: float) -> None:
        self.url, self.key, self.rate = url, key, rate
        self._lock = threading.Lock()
        self._script: Any = None  # the sync script object (one redis connection pool for all threads)
        self._loop_scripts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._down_until = 0.0
        self._warned = False
        pairs = rates(rate)
        self._args = [max(window for _, window in pairs), *(x for pair in pairs for x in pair)]

    # ------------------------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        """False while the store is considered unreachable (the caller paces alone meanwhile)."""
        return time.monotonic() >= self._down_until

    def _lost(self, err: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_S
        with self._lock:
            self._script = None
            self._loop_scripts.clear()
            first, self._warned = not self._warned, True
        message = (
            "Kakao Pose shared rate limit store %s is unreachable (%s: %s): this process paces itself alone "
            "(rate_limit_per_second holds per process, not for the deployment); retrying the store every %.0f s"
        )
        args = (_safe_url(self.url), type(err).__name__, err, RETRY_AFTER_S)
        (log.warning if first else log.debug)(message, *args)

    # ------------------------------------------------------------------------------------------- sync

    def _sync_script(self) -> Any:
        with self._lock:
            if self._script is None:
                import redis

                pool = redis.BlockingConnectionPool.from_url(self.url, **_POOL_OPTIONS)
                client = redis.Redis(connection_pool=pool)
                self._script = client.register_script(ACQUIRE_SCRIPT)
            return self._script

    def wait_time(self) -> float | None:
        """Reserve the deployment's next free slot and return the seconds until it (0.0: send now); ``None``
        if the store is unreachable (the caller goes on with local pacing only)."""
        if not self.available:
            return None
        try:
            wait_us = int(self._sync_script()(keys=[self.key], args=[os.urandom(6).hex(), *self._args]))
        except Exception as err:
            self._lost(err)
            return None
        return wait_us / 1_000_000

    def acquire(self) -> bool:
        """Block the calling thread until its reserved slot; False if the store is unreachable."""
        wait = self.wait_time()
        if wait is None:
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    # ------------------------------------------------------------------------------------------ async

    def _loop_script(self) -> Any:
        loop = asyncio.get_running_loop()
        script = self._loop_scripts.get(loop)
        if script is None:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(self.url, **_POOL_OPTIONS)
            client = redis.asyncio.Redis(connection_pool=pool)
            script = self._loop_scripts[loop] = client.register_script(ACQUIRE_SCRIPT)
        return script

    async def wait_time_async(self) -> float | None:
        """:meth:`wait_time` without blocking the event loop (one Redis client per loop)."""
        if not self.available:
            return None
        try:
            wait_us = int(await self._loop_script()(keys=[self.key], args=[os.urandom(6).hex(), *self._args]))
        except Exception as err:
            self._lost(err)
            return None
        return wait_us / 1_000_000

    async def acquire_async(self) -> bool:
        """Wait on the loop until the caller's reserved slot; False if the store is unreachable."""
        wait = await self.wait_time_async()
        if wait is None:
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        return True


_QUOTAS: dict[tuple[str, str, float], SharedQuota] = {}
_QUOTAS_LOCK = threading.Lock()


def shared_quota(base_url: str, api_key: str, rate: float | None) -> SharedQuota | None:
    """The process's :class:`SharedQuota` for one app key, when a store is configured and a rate is set."""
    if not rate:
        return None
    url = configured_store()
    if url is None:
        return None
    try:
        import redis  # noqa: F401
    except ImportError as err:
        with _QUOTAS_LOCK:
            if ("missing", url, 0.0) not in _QUOTAS:
                _QUOTAS[("missing", url, 0.0)] = None  # type: ignore[assignment]
                log.warning(
                    "[kakao_pose] rate_limit_store is set, but %s is not installed "
                    "(pip install 'airflow-provider-kakaopose[redis]'): this process paces itself alone",
                    err.name,
                )
        return None
    key = (url, bucket_key(base_url, api_key), float(rate))
    with _QUOTAS_LOCK:
        quota = _QUOTAS.get(key)
        if quota is None:
            quota = _QUOTAS[key] = SharedQuota(url, key[1], float(rate))
        return quota
