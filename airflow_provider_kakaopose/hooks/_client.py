"""What the sync and async hooks share: settings, error mapping, retry policy, rate limiting, uploads.

Neither hook does its own status-code or retry logic: each turns its transport's answer into
``(status, headers, body)`` and calls :func:`check_response`, wraps transport failures with
:func:`transport_error`, and runs attempts under :func:`retry_kwargs`. Only the I/O differs.
"""

from __future__ import annotations

import collections
import email.utils
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseAuthError,
    KakaoPoseConnectionError,
    KakaoPoseError,
    KakaoPoseInputError,
    KakaoPoseQuotaError,
    KakaoPoseResponseError,
    KakaoPoseServerError,
)
from airflow_provider_kakaopose.get_provider_info import CONN_FIELDS, CONN_TYPE, DEFAULT_BASE_URL
from airflow_provider_kakaopose.hooks._shared_quota import SharedQuota
from airflow_provider_kakaopose.jobs import JobStatus
from airflow_provider_kakaopose.validation import (
    DEFAULT_LIMITS,
    Limits,
    check_image_bytes,
    check_url,
    check_video_size,
    sniff_image,
)

#: Every job status the service answers (:class:`~airflow_provider_kakaopose.jobs.JobStatus`).
JOB_STATUSES = frozenset(JobStatus)
AUTH_CODES = frozenset({-401, -3, -5, -12})
QUOTA_CODES = frozenset({-10, -11})
#: Bytes per read when a job body is streamed through the status reader.
STATUS_CHUNK = 256 << 10
#: A job id that cannot exist: looking it up checks host and key without spending analysis quota.
PROBE_JOB_ID = "00000000-0000-0000-0000-000000000000"


class WarningLog(Protocol):
    """What the hooks log through: a :class:`logging.Logger` or Airflow 3's structlog logger (``hook.log``)."""

    def warning(self, msg: Any, /, *args: Any) -> Any: ...


def _extra_default(name: str) -> Any:
    return CONN_FIELDS[name]["schema"]["default"]


@dataclass(frozen=True)
class ConnSettings:
    """Everything a hook needs from a ``kakao_pose`` connection, parsed and checked once."""

    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float = _extra_default("connect_timeout")
    read_timeout: float = _extra_default("read_timeout")
    max_retries: int = _extra_default("max_retries")
    retry_wait_initial: float = _extra_default("retry_wait_initial")
    retry_wait_max: float = _extra_default("retry_wait_max")
    rate_limit_per_second: float | None = None
    validate_inputs: bool = True

    @property
    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"KakaoAK {self.api_key}"}

    @classmethod
    def from_connection(
        cls, conn: Any, log: WarningLog | None = None, *, extra: Mapping[str, Any] | None = None
    ) -> ConnSettings:
        """Build settings from an Airflow Connection; bad values raise naming the field.

        :param extra: the connection's extras when already read (an event loop reads them asynchronously);
            default ``conn.extra_dejson``. Keys in the old ``extra__kakao_pose__<name>`` form are accepted.
        """
        conn_id = getattr(conn, "conn_id", "?")
        api_key = (conn.password or "").strip()
        if not api_key:
            raise KakaoPoseAuthError(
                f"Connection {conn_id!r} has no REST API key: put it in the connection's password field"
            )
        prefix = f"extra__{CONN_TYPE}__"
        stored = dict(conn.extra_dejson or {}) if extra is None else dict(extra)
        extra = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in stored.items()}
        unknown = sorted(set(extra) - set(CONN_FIELDS) - {"scheme"})
        if unknown and log is not None:
            log.warning("Connection %r: ignoring unknown extra field(s) %s", conn_id, ", ".join(unknown))
        values: dict[str, Any] = {}
        for name, kind in (
            ("connect_timeout", float),
            ("read_timeout", float),
            ("max_retries", int),
            ("retry_wait_initial", float),
            ("retry_wait_max", float),
            ("rate_limit_per_second", float),
        ):
            raw = extra.get(name)
            if raw is None or raw == "":
                continue
            try:
                value = kind(raw)
                if kind is int and float(raw) != value:
                    raise ValueError
            except (TypeError, ValueError):
                raise KakaoPoseError(
                    f"Connection {conn_id!r}: extra {name!r} must be a {kind.__name__}, not {raw!r}"
                ) from None
            if value < 0 or (name == "rate_limit_per_second" and value == 0):
                raise KakaoPoseError(f"Connection {conn_id!r}: extra {name!r} must be positive, not {raw!r}")
            values[name] = value
        if "validate_inputs" in extra:
            values["validate_inputs"] = _as_bool(extra["validate_inputs"], conn_id)
        return cls(base_url=base_url_from(conn, extra), api_key=api_key, **values)


def _as_bool(raw: Any, conn_id: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise KakaoPoseError(f"Connection {conn_id!r}: extra 'validate_inputs' must be true or false, not {raw!r}")


def base_url_from(conn: Any, extra: Mapping[str, Any]) -> str:
    """The API base URL: the host (scheme and port may be in it), else the public endpoint."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{extra.get('scheme') or 'https'}://{host}"
    if conn.port and host.count(":") < 2:  # scheme:// only, no port in the host yet
        scheme, rest = host.split("://", 1)
        hostname, _, path = rest.partition("/")
        host = f"{scheme}://{hostname}:{conn.port}" + (f"/{path}" if path else "")
    return host


# --------------------------------------------------------------------------------------------- errors


def _describe(method: str, path: str) -> str:
    return f"{method} {path}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_response(method: str, path: str, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
    """Return the body of a 2xx answer; raise the mapped :class:`KakaoPoseError` for anything else."""
    if 200 <= status < 300:
        return body
    raise response_error(method, path, status, headers, body)


def response_error(method: str, path: str, status: int, headers: Mapping[str, str], body: bytes) -> KakaoPoseError:
    """Map a non-2xx answer to the right error class, with the service's code and message (never headers)."""
    code: int | None = None
    msg: str | None = None
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        raw_code = parsed.get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        msg = parsed.get("msg") if isinstance(parsed.get("msg"), str) else None
    if msg is None:
        msg = _snippet(body) or None
    text = f"{_describe(method, path)} failed: HTTP {status}"
    if code is not None:
        text += f", code {code}"
    if msg:
        text += f": {msg}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "msg": msg,
        "retry_after": parse_retry_after(headers.get("Retry-After")),
    }
    if status in (401, 403) or code in AUTH_CODES:
        return KakaoPoseAuthError(text + " (check the REST API key and the app's Pose permission)", **kwargs)
    if status == 429 or code in QUOTA_CODES:
        return KakaoPoseQuotaError(text, retryable=code != -11, **kwargs)
    if code == -2:
        return KakaoPoseInputError(text, **kwargs)
    if status >= 500 or code == -1:
        return KakaoPoseServerError(text, retryable=True, **kwargs)
    return KakaoPoseError(text, **kwargs)


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text + ("…" if len(body) > limit else "")


def transport_error(method: str, path: str, base_url: str, err: BaseException) -> KakaoPoseConnectionError:
    """A retryable error for a connection failure or timeout: the message names the call and the host and ends
    with the whole cause, down to its root (e.g. the resolver's own message); never a request header.

    ``connected`` says whether the connection was made at all (see :func:`never_connected`)."""
    cause = describe_transport_failure(err)
    return KakaoPoseConnectionError(
        f"{_describe(method, path)} to {base_url} failed: {cause}",
        retryable=True,
        connected=not never_connected(err),
        cause=cause,
    )


#: The most characters kept of one exception's text in a described chain (the root's is always kept whole).
_LAYER_LIMIT = 500
#: ``HTTPConnection(host='h', port=80): `` / ``HTTPSConnectionPool(host='h', port=443): `` — the host is named
#: already (the base URL).
_CONNECTION_PREFIX = re.compile(r"^\w*Connection(?:Pool)?\(host=[^)]*\):\s*")
_CAUSED_BY = re.compile(r"\s*\(Caused by .*\)\s*$", re.S)
#: A credential that a library might one day quote: never shown.
_CREDENTIAL = re.compile(r"(?i)(\bauthorization\b[\s:='\"]*(?:\w+\s+)?|\bkakaoak\s+)[^\s,;)'\"]+")


def exception_chain(err: BaseException, limit: int = 12) -> list[BaseException]:
    """``err`` and the exceptions it wraps, outermost first: requests keeps urllib3's error in its args, urllib3's
    ``MaxRetryError`` in ``reason``, aiohttp's connector errors in ``os_error``; then ``__cause__`` and an
    unsuppressed ``__context__``."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(chain) < limit:
        seen.add(id(current))
        chain.append(current)
        inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        for name in ("reason", "os_error"):
            if inner is None and isinstance(getattr(current, name, None), BaseException):
                inner = getattr(current, name)
        if inner is None:
            inner = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        current = inner
    return chain


def _own_text(err: BaseException) -> str:
    """What one exception says itself, without the exceptions it wraps or objects' reprs."""
    if type(err).__name__ == "MaxRetryError":
        return ""  # "Max retries exceeded" (urllib3 retries are off: one try) around the real cause
    if type(err).__str__ not in (BaseException.__str__, OSError.__str__) or (
        isinstance(err, OSError) and err.errno is not None
    ):
        text = str(err)  # its own formatting (aiohttp's connector errors), or "[Errno 111] Connection refused"
    else:
        text = ": ".join(a.strip() for a in err.args if isinstance(a, str) and a.strip())
    text = _CAUSED_BY.sub("", _CONNECTION_PREFIX.sub("", " ".join(text.split())))
    return text.strip()


def describe_transport_failure(err: BaseException) -> str:
    """A one-line account of a transport failure that keeps its whole cause: the most specific library error's
    class, then what each exception of the chain adds, ending with the root cause's text, e.g.
    ``NameResolutionError: Failed to resolve 'api.example': [Errno -2] Name or service not known``. Text an
    inner exception says is not repeated by the outer ones."""
    chain = exception_chain(err)
    kept: list[tuple[BaseException, str]] = []  # innermost first
    for exc in reversed(chain):
        text = _own_text(exc)
        for inner, inner_text in list(kept):
            quoted = [inner_text]
            strerror = getattr(inner, "strerror", None)
            if isinstance(strerror, str) and strerror:
                quoted.append(strerror)
            for q in quoted:  # "… (inner)", "… [strerror]", "…: inner" say it again: cut it here
                for form in (f"({q})", f"[{q}]"):
                    text = text.replace(form, "")
                if text.rstrip().endswith(q) and text.strip() != q:
                    text = text.rstrip()[: -len(q)]
            text = text.strip().rstrip(":;,").strip()
            if text and inner_text in text:  # the outer one says it in its own words: keep that
                kept.remove((inner, inner_text))
        if not text or any(text == t or text in t for _, t in kept):
            continue
        kept.insert(0, (exc, text))
    named = next((e for e, _ in kept if type(e).__module__ != "builtins"), chain[0])
    parts = [t if n == len(kept) - 1 else _shorten(t).rstrip(".") for n, (_, t) in enumerate(kept)]
    text = f"{type(named).__name__}: " + ": ".join(parts) if parts else type(named).__name__
    return _CREDENTIAL.sub(r"\1<redacted>", text)


def _shorten(text: str) -> str:
    return text if len(text) <= _LAYER_LIMIT else text[: _LAYER_LIMIT - 1] + "…"


def never_connected(err: BaseException) -> bool:
    """True only when the connection was never made — refused, DNS failure, connect timeout (requests/urllib3
    or aiohttp): nothing reached the service, so the request is safe to resend. Anything else (a read timeout,
    a dropped connection, a broken body, an unknown error) may have reached it."""
    urllib3_errors = sys.modules.get("urllib3.exceptions")
    requests_errors = sys.modules.get("requests.exceptions")
    aiohttp = sys.modules.get("aiohttp")
    never: tuple[type, ...] = ()
    if requests_errors is not None:
        never += (requests_errors.ConnectTimeout,)
    if urllib3_errors is not None:  # NewConnectionError and NameResolutionError are ConnectTimeoutErrors too
        never += (urllib3_errors.ConnectTimeoutError,)
    if aiohttp is not None:
        connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", aiohttp.ClientConnectorError)  # aiohttp 3.10+
        never += (aiohttp.ClientConnectorError, connect_timeout)
    return bool(never) and any(isinstance(e, never) for e in exception_chain(err))


def outcome_unknown(err: KakaoPoseError) -> KakaoPoseError:
    """Mark a submission's error as one after which the service may have created the job: never resent.

    The API has no idempotency key, so a request that may have arrived (read timeout, dropped connection,
    5xx or internal error, an unreadable 2xx answer) cannot be told apart from one that created a job.
    """
    err.retryable = False
    err.outcome_unknown = True
    if "may have reached the service" not in err.message:
        err.message += " (the request may have reached the service and created a job; not resent)"
        err.args = (err.message,)
    return err


def answer_leaves_outcome_unknown(err: KakaoPoseError) -> bool:
    """Whether an answer to a submission leaves open that a job was created: a 5xx (a gateway's 502/504
    included), Kakao's internal error (-1), or a 2xx whose body could not be read. A quota refusal (429,
    -10), an auth or input refusal says the request was turned down, so it is safe to resend or report."""
    status = err.status_code
    return status is None or status >= 500 or 200 <= status < 300 or err.code == -1


def parse_json(body: bytes, method: str, path: str) -> Any:
    """Parse a JSON body; a body that is not JSON raises :class:`KakaoPoseResponseError` quoting its start."""
    try:
        return json.loads(body)
    except ValueError as err:
        raise KakaoPoseResponseError(
            f"{_describe(method, path)} answered a body that is not JSON ({err.__class__.__name__}: {err}); "
            f"it starts with {_snippet(body, 120)!r}"
        ) from None


def check_persons(value: Any, method: str, path: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise KakaoPoseResponseError(
            f"{_describe(method, path)} answered {type(value).__name__}, expected a JSON list of persons"
        )
    return value


def check_job_id(value: Any, method: str, path: str) -> str:
    job_id = value.get("job_id") if isinstance(value, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise KakaoPoseResponseError(f"{_describe(method, path)} answered without a job_id: {value!r:.200}")
    return job_id


def check_job(value: Any, method: str, path: str) -> dict:
    status = value.get("status") if isinstance(value, dict) else None
    if not isinstance(status, str) or status not in JOB_STATUSES:
        raise KakaoPoseResponseError(
            f"{_describe(method, path)} answered an unknown job status {status!r}"
            f" (expected one of {', '.join(sorted(JOB_STATUSES))})"
        )
    return value


def job_path(job_id: str) -> str:
    """``/pose/job/{job_id}``, refusing ids that would change the path."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise KakaoPoseInputError(f"job_id must be a non-empty string, not {job_id!r}")
    if any(c in job_id for c in "/?#% \t\r\n"):
        raise KakaoPoseInputError(f"job_id {job_id!r} contains characters a job id never has")
    return f"/pose/job/{job_id}"


# ---------------------------------------------------------------------------------------------- retry


def _is_retryable(err: BaseException) -> bool:
    return isinstance(err, KakaoPoseError) and err.retryable


def new_rate_limiter(settings: ConnSettings) -> RateLimiter:
    """The limiter for a connection: its ``rate_limit_per_second``, shared by the deployment when a store is
    configured (``[kakao_pose] rate_limit_store``)."""
    from airflow_provider_kakaopose.hooks._shared_quota import shared_quota

    rate = settings.rate_limit_per_second
    return RateLimiter(rate, shared=shared_quota(settings.base_url, settings.api_key, rate))


def retry_kwargs(settings: ConnSettings, log: WarningLog, what: str) -> dict[str, Any]:
    """Keyword arguments for tenacity's ``Retrying`` *and* ``AsyncRetrying``: one policy for both hooks.

    Exponential backoff with jitter; a ``Retry-After`` from the service replaces the backoff (capped at
    ``retry_wait_max``). Only retryable :class:`KakaoPoseError` s are retried; the last error is re-raised.
    """
    backoff = wait_exponential_jitter(
        multiplier=settings.retry_wait_initial,
        max=settings.retry_wait_max,
        jitter=settings.retry_wait_initial,
    )

    def wait(state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, settings.retry_wait_max)
        return backoff(state)

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: attempt %d of %d failed (%s); retrying in %.2f s",
            what,
            state.attempt_number,
            settings.max_retries + 1,
            err,
            state.upcoming_sleep,
        )

    return {
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": wait,
        "retry": retry_if_exception(_is_retryable),
        "before_sleep": before_sleep,
        "reraise": True,
    }


class UnreachableBreaker:
    """Stops a batch whose service cannot be reached at all, instead of retrying every request of it.

    One breaker is shared by the requests of one batch (the image operator sets it on its hook, read by every
    attempt in every thread). It opens when **nothing of the batch has reached the service yet** (no answer of
    any kind, no connection made) and the connection could not even be made (refused, DNS failure, connect
    timeout: :func:`never_connected`)

    * for ``min(3, total)`` requests of the batch (several inputs, not one unlucky request), and
    * on ``min(3, max_retries + 1)`` attempts in a row of one request: its first try and two retries, so the
      endpoint stayed unreachable through two backoff waits (with the default retry settings 3-5 s after the
      batch started, instead of every request's whole retry budget: about 34 s each).

    Once open, every attempt still to come raises one :class:`KakaoPoseConnectionError` (not retryable) and
    backoff waits end at once, so the threads of the batch stop within moments. Once any request of the batch
    has reached the service, it never opens: a flaky network is left to the per-request retries and the
    per-image errors table.
    """

    def __init__(self, total: int, *, noun: str = "image") -> None:
        self.total = total
        self.noun = noun
        self.need_requests = min(3, max(total, 1))
        self.reached = False  # some request of the batch connected (or was answered)
        self.failed_requests = 0  # requests whose first attempt could not connect
        self.failed_attempts = 0
        self.longest = 0  # the most attempts one request made, none of which connected
        self.message: str | None = None
        self._open = threading.Event()
        self._lock = threading.Lock()
        self._start = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def stopped(self) -> KakaoPoseConnectionError:
        """The batch's error (a new instance for each thread that raises it)."""
        return KakaoPoseConnectionError(self.message or "the batch was stopped", retryable=False, connected=False)

    def check(self) -> None:
        """Before an attempt: raise the batch's error if the breaker is open."""
        if self._open.is_set():
            raise self.stopped()

    def on_reached(self) -> None:
        """A request connected or was answered: the service is reachable, the breaker never opens."""
        self.reached = True

    def on_error(self, error: KakaoPoseError, attempt: int, settings: ConnSettings) -> KakaoPoseError:
        """Count a failed attempt; return the error to raise (the batch's error once the breaker opened)."""
        if not isinstance(error, KakaoPoseConnectionError) or error.connected is not False:
            self.reached = True
            return error
        with self._lock:
            if self._open.is_set():
                return self.stopped()
            if self.reached:
                return error
            self.failed_attempts += 1
            self.failed_requests += attempt == 1
            self.longest = max(self.longest, attempt)
            if self.failed_requests < self.need_requests or self.longest < min(3, settings.max_retries + 1):
                return error
            self.message = (
                f"cannot reach {settings.base_url}: {self._count(self.failed_requests)} in a row could not connect "
                f"({error.cause or error.message}); stopped the batch of {self._count(self.total)} after "
                f"{time.monotonic() - self._start:.1f} s and {self.failed_attempts} attempts; nothing was answered"
            )
            self._open.set()
        return self.stopped()

    def sleep(self, seconds: float) -> None:
        """Tenacity's sleep between attempts: ends at once when the breaker opens."""
        self._open.wait(seconds)

    def _count(self, n: int) -> str:
        return f"{n} {self.noun}" + ("" if n == 1 else "s")


class RateLimiter:
    """Paces requests to ``rate`` per second; thread-safe, shared by sync and async callers.

    Two steps per request, each a little arithmetic under a lock (so it never blocks an event loop):

    1. **book** a turn: the next free slot, ``1/rate`` after the previous one. Callers are served in the
       order they came and wake one spacing apart, so a thousand triggers do not wake at once.
    2. **claim** the send when the caller wakes, against the requests *actually sent*: allowed if it keeps the
       pace of a token bucket of rate ``rate`` and depth 2 (a caller that woke late may go right after the
       previous one, never a third at once) and leaves at most ``ceil(rate)`` sends in any one-second window.
       A caller that is not allowed waits only the time the claim names and claims again — it keeps its
       place, so a loop that lags or busy threads slow the pace down a little, never starve a caller.

    With a ``shared`` quota (``[kakao_pose] rate_limit_store``, see :mod:`._shared_quota`), a request that may
    go by this process's pace then also takes a slot of the deployment's quota in Redis, so the rate holds for
    all processes together; when the store is unreachable it goes on with the local pace only.

    It is also adaptive (AIMD-like): a quota answer from the service (:meth:`on_quota`) sets the spacing to
    what 80 % of the pace of the last second's sends would need (at most once per second, however many
    requests in flight hit the quota at once); every success (:meth:`on_success`) relaxes it by 2 %, back
    down to the configured rate. So a batch that outruns the service's quota slows down together.
    """

    #: Spacing used after a quota answer when too little recent traffic was seen to measure a pace.
    first_penalty = 0.1
    max_penalty = 5.0

    def __init__(self, rate_per_second: float | None, *, shared: SharedQuota | None = None) -> None:
        self.rate = rate_per_second or None
        #: The deployment-wide quota this limiter also takes slots of (None: this process paces alone).
        self.shared = shared
        self.interval = 1.0 / rate_per_second if rate_per_second else 0.0
        self.penalty = 0.0
        self._next = 0.0  # the next free slot to book
        self._tat = 0.0  # when the bucket is full again (theoretical arrival time of the actual sends)
        cap = math.ceil(rate_per_second - 1e-9) if rate_per_second else 0
        self._window: collections.deque[float] = collections.deque(maxlen=max(cap, 1))  # the last sends
        self._cap = cap
        self._recent: collections.deque[float] = collections.deque(maxlen=4096)  # sends, for on_quota's pace
        self._calm_until = 0.0
        self._lock = threading.Lock()

    def _spacing(self) -> float:
        return max(self.interval, self.penalty)

    def book(self) -> float:
        """Book the caller's turn; returns the ``time.monotonic()`` of its slot."""
        with self._lock:
            now = time.monotonic()
            spacing = self._spacing()
            if not spacing:
                return now
            slot = max(now, self._next)
            self._next = slot + spacing
            return slot

    def claim(self) -> float:
        """Send now if the pace of actual sends allows it (recorded, returns 0), else seconds to wait first."""
        with self._lock:
            now = time.monotonic()
            spacing = self._spacing()
            wait = self._tat - spacing - now if spacing else 0.0  # bucket depth 2: one spacing of slack
            if self._cap and len(self._window) == self._cap:
                wait = max(wait, self._window[0] + 1.0 - now)
            if wait > 0:
                return wait
            if spacing:
                self._tat = max(self._tat, now) + spacing
            if self._cap:
                self._window.append(now)
            self._recent.append(now)
            return 0.0

    def acquire(self) -> None:
        """Block the calling thread until it may send (sync hook)."""
        delay = self.book() - time.monotonic()
        while True:
            if delay > 0:
                time.sleep(delay)
            delay = self.claim()
            if not delay:
                break
        if self.shared is not None:
            self.shared.acquire()  # False: the store is unreachable, the local pace holds alone

    async def acquire_async(self) -> None:
        """Wait, without blocking the event loop, until the caller may send (async hook, triggers)."""
        import asyncio

        delay = self.book() - time.monotonic()
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            delay = self.claim()
            if not delay:
                break
        if self.shared is not None:
            await self.shared.acquire_async()

    def sent_times(self) -> list[float]:
        """``time.monotonic()`` of the last 4,096 sends this limiter allowed (for tests and benchmarks)."""
        with self._lock:
            return list(self._recent)

    def sent_in_last_second(self) -> int:
        """Requests sent in the last second (what :meth:`on_quota` measures)."""
        with self._lock:
            now = time.monotonic()
            return sum(1 for t in self._recent if now - 1.0 < t <= now)

    def on_quota(self) -> None:
        """The service said the quota is exhausted: space requests further apart."""
        with self._lock:
            now = time.monotonic()
            if now < self._calm_until:
                return  # the requests already in flight hit the same limit; one slow-down is enough
            self._calm_until = now + 1.0
            pace = sum(1 for t in self._recent if now - 1.0 < t <= now)
            current = self._spacing()
            target = 1.0 / (0.8 * pace) if pace >= 2 else max(current * 2, self.first_penalty)
            self.penalty = min(max(target, current * 1.1), self.max_penalty)

    def on_success(self) -> None:
        """A request went through: relax the extra spacing a little."""
        if self.penalty:
            with self._lock:
                relaxed = self.penalty * 0.98
                self.penalty = relaxed if relaxed > max(self.interval * 1.01, 0.001) else 0.0


# -------------------------------------------------------------------------------------------- uploads

_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "heic": "image/heic"}


@dataclass(frozen=True)
class Upload:
    """A file ready to send as the multipart field ``file`` (bytes are kept so a retry can resend them)."""

    name: str
    data: bytes = field(repr=False)
    content_type: str = "application/octet-stream"


def read_upload(file: str | os.PathLike | bytes | IO[bytes] | Any, kind: str) -> Upload:
    """Read ``file`` (path, bytes, binary file object or anything with ``read_bytes()``) into an Upload."""
    if isinstance(file, bytes | bytearray | memoryview):
        data, name = bytes(file), None
    elif hasattr(file, "read_bytes"):  # pathlib.Path, Airflow's ObjectStoragePath (local or remote)
        try:
            if hasattr(file, "exists") and not file.exists():
                raise KakaoPoseInputError(f"{kind} file {str(file)!r} does not exist")
            if hasattr(file, "is_dir") and file.is_dir():
                raise KakaoPoseInputError(f"{kind} file {str(file)!r} is a directory, not a file")
            data, name = file.read_bytes(), getattr(file, "name", None)
        except (ValueError, ImportError) as err:  # no filesystem for the scheme, its package not installed
            raise KakaoPoseInputError(f"Cannot read {kind} file {str(file)!r}: {err}") from None
    elif isinstance(file, str | os.PathLike):
        path = os.fspath(file)
        if not os.path.exists(path):
            raise KakaoPoseInputError(f"{kind} file {path!r} does not exist")
        if os.path.isdir(path):
            raise KakaoPoseInputError(f"{kind} file {path!r} is a directory, not a file")
        with open(path, "rb") as fh:
            data = fh.read()
        name = os.path.basename(path)
    elif hasattr(file, "read"):
        data = file.read()
        if isinstance(data, str):
            raise KakaoPoseInputError(f"{kind} file object {file!r} is open in text mode; open it with 'rb'")
        name = os.path.basename(str(getattr(file, "name", "") or "")) or None
    else:
        raise KakaoPoseInputError(
            f"{kind} file must be a path, bytes or a binary file object, not {type(file).__name__}"
        )
    info = sniff_image(data) if kind == "image" else None
    content_type = _MIME.get(info.format, "application/octet-stream") if info else "application/octet-stream"
    if not name:
        name = f"{kind}.{info.format}" if info else kind
    return Upload(name=name, data=data, content_type=content_type)


def one_of(url: Any, file: Any, url_name: str, kind: str) -> None:
    if (url is None) == (file is None):
        which = "both" if url is not None else "neither"
        raise KakaoPoseInputError(f"Give exactly one of {url_name} or file for the {kind}; got {which}")


def check_image_input(
    image_url: str | None, upload: Upload | None, settings: ConnSettings, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Pre-flight rules for an image; all skipped when the connection says ``validate_inputs: false``."""
    if not settings.validate_inputs:
        return
    problems = check_url(image_url, "image_url") if image_url is not None else []
    if upload is not None:
        problems = check_image_bytes(upload.data, upload.name, limits)
    _raise_problems(problems)


def check_video_input(
    video_url: str | None,
    upload: Upload | None,
    callback_url: str | None,
    settings: ConnSettings,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Pre-flight rules for a video job; all skipped when the connection says ``validate_inputs: false``."""
    if not settings.validate_inputs:
        return
    problems = check_url(video_url, "video_url") if video_url is not None else []
    if upload is not None:
        problems += check_video_size(len(upload.data), upload.name, limits)
    if callback_url is not None:
        problems += check_url(callback_url, "callback_url", any_port=True)  # 443 is only recommended
    _raise_problems(problems)


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise KakaoPoseInputError("; ".join(problems))
