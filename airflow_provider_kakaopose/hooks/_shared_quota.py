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
alone, as without a store; it tries the store again every :data:`RETRY_AFTER_S` seconds. A URL that is not a
usable Redis URL (a typo in the port, another scheme, no host) is the same: one warning per URL, local pacing,
never tried. The pipeline never stops for it.

If Redis's clock steps back (its host's clock corrected, a failover to a replica whose clock is behind), the
log's entries lie in the future and every caller would wait out the step: the script drops entries that lie
further ahead than a legitimate reservation can (see :data:`ACQUIRE_SCRIPT`), and a caller never waits longer
than :data:`MAX_WAIT_WINDOWS` windows for a slot (beyond, that request paces itself alone).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import threading
import time
import weakref
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

#: The Airflow config option naming the store (section ``kakao_pose``).
CONFIG_SECTION, CONFIG_KEY = "kakao_pose", "rate_limit_store"
#: Seconds before a process that lost the store tries it again.
RETRY_AFTER_S = 30.0
#: Added to the one-second window: requests arrive a little later than they are sent, and not all equally.
WINDOW_MARGIN_MS = 150
#: Seconds to connect to / answer from the store before it counts as unreachable.
STORE_TIMEOUT_S = 0.5
#: The longest a caller waits for its slot, in widest windows of its rate (115 s at rates from 2/s up). A
#: legitimate wait is the queue ahead: about one window per ``ceil(rate)`` callers, so this is ~100 x ceil(rate)
#: callers queued at once (1,000 at 10/s). A longer one means a store broken in a way the script cannot see:
#: that request takes no slot and paces itself alone (one warning per process).
MAX_WAIT_WINDOWS = 100
#: The URL schemes redis-py connects with.
STORE_SCHEMES = ("redis", "rediss", "unix")


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
    """The deployment's store URL from Airflow's config, or ``None`` (no shared quota).

    Read as Airflow reads a sensitive option: ``AIRFLOW__KAKAO_POSE__RATE_LIMIT_STORE``, or ``..._CMD`` (a
    command that prints it), or ``..._SECRET`` (its path in the secrets backend), or ``airflow.cfg`` (with
    ``rate_limit_store_cmd`` / ``_secret`` there too). Its password is registered with the secrets masker.
    """
    try:
        from airflow_provider_kakaopose._compat import conf

        _make_option_known(conf)
        value = conf.get(CONFIG_SECTION, CONFIG_KEY, fallback=None)
    except ImportError:  # outside Airflow: no shared quota
        return None
    except Exception as err:  # e.g. a _CMD that fails; its message may hold the URL, so only its type is logged
        _warn_once(
            ("unreadable",),
            "[kakao_pose] rate_limit_store could not be read (%s): this process paces itself alone",
            type(err).__name__,
        )
        return None
    url = value.strip() if isinstance(value, str) else ""
    if not url:
        return None
    _mask_credentials(url)
    return url


_OPTION_KNOWN = False


def _make_option_known(conf: Any) -> None:
    """Make sure Airflow knows the option is sensitive: it runs ``_CMD`` / ``_SECRET`` only for those.

    Airflow 3.2+ reads the providers' options lazily; 2.x (and 3.0/3.1) only once something loaded the
    providers' configuration. Its CLI does for ``tasks run`` and the triggerer; a bare interpreter (a script,
    ``dag.test()``) does not, so load it here, once per process, if it is missing.
    """
    global _OPTION_KNOWN
    if _OPTION_KNOWN:
        return
    _OPTION_KNOWN = True
    try:
        if (CONFIG_SECTION, CONFIG_KEY) not in conf.sensitive_config_values:
            from airflow.providers_manager import ProvidersManager

            ProvidersManager().initialize_providers_configuration()
    except Exception as err:  # then only the plain option (and the environment variable) are read
        log.debug("Could not load the providers' configuration: %s", type(err).__name__)


_MASKED: set[str] = set()


def _mask_credentials(url: str) -> None:
    """Register the store's password (alone, as a Redis error could show it, and within the URL) with
    Airflow's secrets masker, once per URL and process."""
    if url in _MASKED:
        return
    _MASKED.add(url)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if not password:
        return
    try:
        from airflow_provider_kakaopose._compat import mask_secret

        for secret in dict.fromkeys((password, unquote(password), url)):
            mask_secret(secret)
    except Exception as err:  # outside Airflow's logging: nothing to register with
        log.debug("Could not register the store's password with the secrets masker: %s", type(err).__name__)


def bucket_key(base_url: str, api_key: str) -> str:
    """The Redis key of one app key's quota (a digest: the key itself is never stored or logged)."""
    digest = hashlib.sha256(f"{base_url}\0{api_key}".encode()).hexdigest()[:24]
    return f"kakaopose:quota:{digest}"


#: KEYS[1]: the log, a sorted set of reserved send times scored by Redis's clock (µs). ARGV: a member nonce, how
#: long to keep entries (µs, at least the longest window), the longest wait to accept (µs), then (limit, window
#: µs) per rate. Reserves the earliest time at which every rate still holds and returns ``{µs until it (0: send
#: now), µs the log lay ahead if it was repaired (else 0), 1 if reserved (0: beyond the longest wait, nothing
#: taken)}``. Slots are handed out in order, so the log stays sorted and the ``limit``-th newest entry alone
#: decides each rate; callers sleep until their slot instead of asking again (first come, first served, one
#: call per request). The key expires when idle.
#:
#: A clock that stepped back: each slot is at most one window after an entry already in the log, so the first
#: entry after ``now`` lies at most the widest window ahead — however long the queue behind it (a queue of N
#: callers reaches N/rate ahead, but only link by link). A first entry further than two widest windows ahead
#: (one of margin: another process's rate, rounding) was scored by a clock that has since stepped back: every
#: entry ahead of ``now`` is such a one, and is dropped. A smaller step (up to about three windows) is not
#: seen and costs at most that wait.
ACQUIRE_SCRIPT = """
local function int(x) return string.format('%.0f', x) end  -- exact: Lua's tostring keeps 14 digits
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local keep, cap, widest = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for i = 4, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > widest then widest = tonumber(ARGV[i + 1]) end
end
local ahead = 0
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if first[2] and tonumber(first[2]) > now + 2 * widest then
  ahead = tonumber(first[2]) - now
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. int(now), '+inf')
end
local slot = now
local last = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if last[2] and tonumber(last[2]) > slot then slot = tonumber(last[2]) end
for i = 4, #ARGV, 2 do
  local limit, window = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local blocking = redis.call('ZREVRANGE', KEYS[1], limit - 1, limit - 1, 'WITHSCORES')
  if blocking[2] and tonumber(blocking[2]) + window > slot then slot = tonumber(blocking[2]) + window end
end
if slot - now > cap then return {int(slot - now), int(ahead), 0} end
local longest = math.max(keep, widest)
redis.call('ZADD', KEYS[1], int(slot), int(slot) .. ':' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - longest))
redis.call('PEXPIRE', KEYS[1], int(math.floor((slot - now + longest) / 1000) + 1000))
return {int(slot - now), int(ahead), 1}
"""


def rates(rate: float) -> list[tuple[int, int]]:
    """``(limit, window µs)`` pairs for ``rate`` requests per second: two per two spacings, ``ceil(rate)`` per
    second (plus :data:`WINDOW_MARGIN_MS`)."""
    spacing_us = max(1, math.ceil(1_000_000 / rate))
    per_second = max(1, math.ceil(rate - 1e-9))
    return [(2, 2 * spacing_us), (per_second, (1000 + WINDOW_MARGIN_MS) * 1000)]


def _safe_url(url: str) -> str:
    """The store's URL for logs: scheme, host, port and database, never the credentials (nor anything that
    cannot be read as one of those, which shows as ``?``). Never raises."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme if parts.scheme in STORE_SCHEMES else "?"
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ":?"
        shown_path = r"/?\d*" if scheme != "unix" else r"[\w./-]*"
        path = parts.path if re.fullmatch(shown_path, parts.path) else "/?"
        return f"{scheme}://{parts.hostname or ''}{port}{path}"
    except Exception:
        return "?"


def store_problem(url: str) -> str | None:
    """Why ``url`` cannot be a store, or ``None`` if it can; read without connecting. redis-py's own parser
    would raise in the middle of a request, or take a typo for a default (no host: localhost; a database that
    is not a number: 0)."""
    try:
        parts = urlsplit(url)
        if parts.port == 0:
            return "port 0"
    except ValueError:
        return "its host or port cannot be read"
    if parts.scheme not in STORE_SCHEMES:
        return "it must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        if not parts.path:
            return "it names no socket path"
    elif not parts.hostname:
        return "it names no host"
    elif not re.fullmatch(r"/?\d*", parts.path):
        return "its database (the path) is not a number"
    try:
        from redis.connection import parse_url

        parse_url(url)  # its options (?db=, ?socket_timeout=...) as redis-py reads them
    except ImportError:
        pass
    except (TypeError, ValueError):
        return "redis-py cannot read its options"
    return None


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
        self._warned: set[str] = set()  # the kinds of trouble this quota has warned about (once each)
        pairs = rates(rate)
        widest = max(window for _, window in pairs)
        #: The longest wait for a slot this quota accepts, in seconds (see :data:`MAX_WAIT_WINDOWS`).
        self.max_wait = MAX_WAIT_WINDOWS * widest / 1_000_000
        self._args = [widest, int(MAX_WAIT_WINDOWS * widest), *(x for pair in pairs for x in pair)]

    # ------------------------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        """False while the store is considered unreachable (the caller paces alone meanwhile)."""
        return time.monotonic() >= self._down_until

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """A WARNING the first time this quota meets ``kind`` of trouble, DEBUG after."""
        with self._lock:
            first = kind not in self._warned
            self._warned.add(kind)
        (log.warning if first else log.debug)(message, *args)

    def _lost(self, err: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_S
        with self._lock:
            self._script = None
            self._loop_scripts.clear()
        message = (
            "Kakao Pose shared rate limit store %s is unreachable (%s: %s): this process paces itself alone "
            "(rate_limit_per_second holds per process, not for the deployment); retrying the store every %.0f s"
        )
        self._warn("lost", message, _safe_url(self.url), type(err).__name__, _scrub(str(err), self.url), RETRY_AFTER_S)

    def _answer(self, reply: Any) -> float | None:
        """The script's reply as the seconds to wait, or ``None`` when this request is to pace itself alone."""
        wait_us, ahead_us, reserved = (int(x) for x in reply)
        if ahead_us > 0:
            self._warn(
                "repaired",
                "Kakao Pose shared rate limit store %s: its log lay %.1f s ahead of the store's clock (the Redis "
                "host's clock stepped back, or a failover went to a replica whose clock is behind); the entries "
                "ahead were dropped",
                _safe_url(self.url),
                ahead_us / 1_000_000,
            )
        wait = wait_us / 1_000_000
        if not reserved or wait > self.max_wait:
            self._warn(
                "too far",
                "Kakao Pose shared rate limit store %s offered a slot %.1f s away (more than %.0f s): this request "
                "paces itself alone (a store whose clock or log is broken, or far more demand than quota)",
                _safe_url(self.url),
                wait,
                self.max_wait,
            )
            return None
        return wait

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
        if the store is unreachable, or its slot would be more than :attr:`max_wait` away (the caller goes on
        with local pacing only)."""
        if not self.available:
            return None
        try:
            reply = self._sync_script()(keys=[self.key], args=[os.urandom(6).hex(), *self._args])
        except Exception as err:
            self._lost(err)
            return None
        return self._answer(reply)

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
            reply = await self._loop_script()(keys=[self.key], args=[os.urandom(6).hex(), *self._args])
        except Exception as err:
            self._lost(err)
            return None
        return self._answer(reply)

    async def acquire_async(self) -> bool:
        """Wait on the loop until the caller's reserved slot; False if the store is unreachable."""
        wait = await self.wait_time_async()
        if wait is None:
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        return True


def _scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (an error message that quotes the URL)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    for secret in (password, unquote(password or "")):
        if secret:
            text = text.replace(secret, "***")
    return text


_QUOTAS: dict[tuple[str, str, float], SharedQuota] = {}
_QUOTAS_LOCK = threading.Lock()
_WARNED: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str, *args: Any) -> None:
    """One WARNING per process for ``key`` (e.g. a URL: the key is never logged)."""
    with _QUOTAS_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning(message, *args)


def shared_quota(base_url: str, api_key: str, rate: float | None) -> SharedQuota | None:
    """The process's :class:`SharedQuota` for one app key, when a store is configured and a rate is set; ``None``
    (the process paces itself alone, after one warning) when the store's URL is unusable or ``redis`` is
    missing."""
    if not rate:
        return None
    url = configured_store()
    if url is None:
        return None
    problem = store_problem(url)
    if problem is not None:
        _warn_once(
            ("unusable", url),
            "[kakao_pose] rate_limit_store %s is not a usable Redis URL (%s): this process paces itself alone "
            "(rate_limit_per_second holds per process, not for the deployment)",
            _safe_url(url),
            problem,
        )
        return None
    try:
        import redis  # noqa: F401
    except ImportError as err:
        _warn_once(
            ("missing", url),
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
