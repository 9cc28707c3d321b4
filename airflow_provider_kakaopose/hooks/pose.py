"""Hooks for the Kakao Brain Pose API: :class:`KakaoPoseHook` (sync, requests) and
:class:`KakaoPoseAsyncHook` (async, aiohttp, for triggers).

Both read the ``kakao_pose`` connection (password = REST API key, host = API base URL, extras for timeouts,
retries, rate limit and input checks) and share one policy for errors, retries and rate limiting
(:mod:`airflow_provider_kakaopose.hooks._client`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

import requests
from tenacity import AsyncRetrying, Retrying

from airflow_provider_kakaopose import __version__
from airflow_provider_kakaopose._compat import BaseHook
from airflow_provider_kakaopose.exceptions import (
    KakaoPoseAuthError,
    KakaoPoseConnectionError,
    KakaoPoseError,
    KakaoPoseInputError,
    KakaoPoseQuotaError,
)
from airflow_provider_kakaopose.get_provider_info import (
    CONN_FIELDS,
    CONN_TYPE,
    DEFAULT_CONN_ID,
    UI_FIELD_BEHAVIOUR,
)
from airflow_provider_kakaopose.hooks._client import (
    PROBE_JOB_ID,
    STATUS_CHUNK,
    ConnSettings,
    RateLimiter,
    UnreachableBreaker,
    Upload,
    answer_leaves_outcome_unknown,
    check_image_input,
    check_job,
    check_job_id,
    check_persons,
    check_response,
    check_video_input,
    job_path,
    never_connected,
    new_rate_limiter,
    one_of,
    outcome_unknown,
    parse_json,
    read_upload,
    retry_kwargs,
    transport_error,
)
from airflow_provider_kakaopose.hooks._status import JobStatusReader
from airflow_provider_kakaopose.validation import DEFAULT_LIMITS, Limits

FileInput = str | os.PathLike | bytes | IO[bytes]
#: What a request's ``parse`` gets from a 2xx answer: the body (bytes), the status scan's top-level fields, or the
#: byte count of a download.
ParseInput = bytes | dict[str, Any] | int

__all__ = ["KakaoPoseAsyncHook", "KakaoPoseHook"]


class BinarySink(Protocol):
    """Where a downloaded body goes: anything with a binary ``write`` (a file, a
    :class:`~airflow_provider_kakaopose.tables.BodySpool`, a pipe). ``seek``/``truncate``, when present, let a
    download that broke mid-body be retried from the first byte."""

    def write(self, data: bytes, /) -> Any: ...


class _KakaoPoseHookBase(BaseHook):
    """Connection handling common to both hooks."""

    conn_name_attr = "kakao_pose_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Kakao Brain Pose"

    def __init__(
        self,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        *,
        limits: Limits | None = None,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.kakao_pose_conn_id = kakao_pose_conn_id
        #: Input limits for pre-flight checks; pass your own for a partnership's higher limits.
        self.limits = limits or DEFAULT_LIMITS
        self._settings: ConnSettings | None = None
        self._rate_limiter: RateLimiter | None = None
        self._session: Any = None
        # The sync hook's settings, session and limiter may be first asked for by several threads at once.
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kakao_pose_conn_id={self.kakao_pose_conn_id!r})"

    def _settings_from(self, conn: Any, extra: dict[str, Any] | None = None) -> ConnSettings:
        settings = ConnSettings.from_connection(conn, self.log, extra=extra)
        _mask(settings.api_key)
        return settings


def _mask(secret: str) -> None:
    """Register the key with Airflow's log masker (a no-op outside Airflow's logging)."""
    from airflow_provider_kakaopose._compat import mask_secret

    mask_secret(secret)


#: Sent with every request of both hooks (the API key is added per request).
HEADERS = {"User-Agent": f"airflow-provider-kakaopose/{__version__}", "Accept": "application/json"}


def _new_session() -> requests.Session:
    """The sync hook's pooled session (sized for concurrent batches; retries are the hook's own)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update(HEADERS)
    return session


def _new_async_session(connector: Any = None) -> Any:
    """An aiohttp session for the async hook, sending the same :data:`HEADERS` as the sync one."""
    import aiohttp

    return aiohttp.ClientSession(connector=connector, headers=HEADERS)


class KakaoPoseHook(_KakaoPoseHookBase):
    """Synchronous client for the Pose API on one pooled ``requests`` session.

    :param kakao_pose_conn_id: the ``kakao_pose`` connection to use.
    :param limits: input limits for pre-flight checks (default: the service's free-tier limits).

    Calls are retried with exponential backoff and jitter on connection errors, timeouts, HTTP 429, 5xx
    and Kakao codes -1/-10, honouring ``Retry-After``; all calls of one hook share one client-side rate
    limiter when the connection sets ``rate_limit_per_second``. The hook is safe to use from several threads.
    """

    # The connection form. Airflow 3.2+ builds it from provider info (conn-fields, ui-field-behaviour);
    # 2.11, 3.0 and 3.1 call these two methods, and only when the registered hook class defines them itself
    # (they look in its own __dict__), so they live here rather than on the shared base.

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Relabel the standard connection form: password is the REST API key, host the base URL."""
        return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Form fields for the connection's extras (WTForms; Airflow 3.0/3.1 convert them for their UI)."""
        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import BooleanField, StringField
        except ImportError:  # no FAB: Airflow 3.2+ builds the form from provider info's conn-fields
            return {}
        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            label, description = lazy_gettext(spec["label"]), lazy_gettext(spec["description"])
            default = spec["schema"]["default"]
            if "boolean" in spec["schema"]["type"]:
                widgets[name] = BooleanField(label, description=description, default=default)
            else:
                widgets[name] = StringField(
                    label,
                    description=description,
                    default=None if default is None else str(default),
                    widget=BS3TextFieldWidget(),
                )
        return widgets

    @property
    def settings(self) -> ConnSettings:
        """The connection's parsed settings (looked up once per hook)."""
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = self._settings_from(self.get_connection(self.kakao_pose_conn_id))
        return self._settings

    @property
    def rate_limiter(self) -> RateLimiter:
        """The limiter every call of this hook shares (created once, even when many threads ask at once)."""
        limiter = self._rate_limiter
        if limiter is None:
            settings = self.settings
            with self._lock:
                if self._rate_limiter is None:
                    self._rate_limiter = new_rate_limiter(settings)
                limiter = self._rate_limiter
        return limiter

    @property
    def session(self) -> requests.Session:
        """The pooled HTTP session, sized for concurrent batches (one per hook, whatever the threads)."""
        session = self._session
        if session is None:
            with self._lock:
                if self._session is None:
                    self._session = _new_session()
                session = self._session
        return session

    def get_conn(self) -> requests.Session:
        """Return the pooled ``requests`` session (authorization is added per request)."""
        return self.session

    def __enter__(self) -> KakaoPoseHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled session (the hook opens a new one if it is used again)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    # ------------------------------------------------------------------------------------------ transport

    #: Set by a batch (the image operator) on its hook: stops every request once the service proved unreachable.
    breaker: UnreachableBreaker | None = None

    def _request(
        self,
        method: str,
        path: str,
        *,
        fields: dict[str, str] | None = None,
        upload: Upload | None = None,
        settings: ConnSettings | None = None,
        parse: Callable[[Any], Any] = bytes,
        resend_if_unsure: bool = True,
        status_only: bool = False,
        sink: BinarySink | None = None,
    ) -> Any:
        """Send one logical request (with retries) and return ``parse(body)`` of the 2xx answer.

        ``parse`` runs inside the attempt, so its errors carry ``attempts`` and the HTTP status.
        ``resend_if_unsure=False`` (job submission) never resends after a failure that may have happened
        once the request reached the service (read timeout, dropped connection, 5xx, an unreadable 2xx):
        that could create a second job. Such errors have ``outcome_unknown`` set.
        ``status_only=True`` streams a 2xx body through a :class:`JobStatusReader` instead of holding it,
        stops reading once the status is known, and returns the top-level fields.
        ``sink``: a 2xx body is written into this binary file chunk by chunk (never held whole) and the byte
        count is returned; each attempt first empties it (``seek(0)``, ``truncate()``), so a download cut off
        mid-body starts over cleanly on the retry. A sink that cannot be emptied is retried only while none of
        the body has been written into it (see :class:`_Download`).

        Each attempt is :meth:`_attempt`: :meth:`_send`, :meth:`_read_body`, then :func:`_check_answer`;
        transport failures become errors in :meth:`_map_transport_error`.
        """
        call = _Call(
            method,
            path,
            settings or self.settings,
            parse,
            fields=fields,
            upload=upload,
            resend_if_unsure=resend_if_unsure,
            status_only=status_only,
            download=_Download(sink, f"{method} {path}") if sink is not None else None,  # one for all attempts
            breaker=self.breaker,
        )
        # An open breaker ends the backoff waits at once.
        wait: dict[str, Any] = {"sleep": call.breaker.sleep} if call.breaker is not None else {}
        return Retrying(**retry_kwargs(call.settings, self.log, call.what), **wait)(self._attempt, call)

    def _attempt(self, call: _Call) -> Any:
        """One try of ``call``: wait for a turn, send, read the answer and check it."""
        call.attempts += 1
        self.rate_limiter.acquire()
        if call.breaker is not None:
            call.breaker.check()
        resp = None
        try:
            resp = self._send(call)
            if call.breaker is not None:
                call.breaker.on_reached()
            body, value = self._read_body(call, resp)
        except _REQUESTS_TRANSPORT_ERRORS as err:
            raise self._map_transport_error(call, err) from None
        except requests.exceptions.RequestException as err:
            raise KakaoPoseError(f"{call.what} to {call.settings.base_url} failed: {err}") from None
        except KakaoPoseError as err:  # the status reader's, or a download that cannot be retried
            err.status_code = resp.status_code if resp is not None else None
            raise _with_attempts(err, call.attempts) from None
        finally:
            if call.streams and resp is not None:
                resp.close()  # a body left unread closes the connection instead of draining it
        return _check_answer(call, self.rate_limiter, resp.status_code, resp.headers, body, value)

    def _send(self, call: _Call) -> requests.Response:
        """Send the request on the pooled session; the body is streamed when it is scanned or downloaded."""
        s, upload = call.settings, call.upload
        return self.session.request(
            call.method,
            s.base_url + call.path,
            data=call.fields,
            files={"file": (upload.name, upload.data, upload.content_type)} if upload else None,
            headers=s.auth_header,
            timeout=(s.connect_timeout, s.read_timeout),
            stream=call.streams,
        )

    @staticmethod
    def _read_body(call: _Call, resp: requests.Response) -> tuple[bytes, ParseInput]:
        """``(body, what parse gets)``. A 2xx answer is written into the download's sink (parse gets the byte
        count, the body is ``b""``) or scanned for the status (parse gets the top-level fields); any other
        answer, or a plain call, is read whole (parse gets the body)."""
        ok = 200 <= resp.status_code < 300
        if ok and call.download is not None:
            return b"", _download(resp, call.download)
        if ok and call.status_only:
            return b"", _scan_status(resp.iter_content(STATUS_CHUNK), call.what)
        body = resp.content
        return body, body

    @staticmethod
    def _map_transport_error(call: _Call, err: BaseException) -> KakaoPoseError:
        """The error to raise for a connection failure, timeout or broken body: retryable unless a submission
        may have reached the service (then ``outcome_unknown``) or the batch's breaker opened."""
        error: KakaoPoseError = transport_error(call.method, call.path, call.settings.base_url, err)
        if not call.resend_if_unsure and _may_have_arrived(err):
            error = outcome_unknown(error)
        if call.breaker is not None:
            error = call.breaker.on_error(error, call.attempts, call.settings)
        return _with_attempts(error, call.attempts)

    # --------------------------------------------------------------------------------------------- API

    def analyze_image(self, *, image_url: str | None = None, file: FileInput | None = None) -> list[dict]:
        """Detect people in one image: ``POST /pose``.

        :param image_url: an http(s) URL the service fetches (sent form-urlencoded).
        :param file: a path, bytes or a binary file object (sent as multipart field ``file``).
        :return: the service's list of persons (``area``, ``bbox``, ``category_id``, ``keypoints``, ``score``).
        """
        one_of(image_url, file, "image_url", "image")
        upload = read_upload(file, "image") if file is not None else None
        check_image_input(image_url, upload, self.settings, self.limits)
        fields = {"image_url": image_url} if image_url is not None else None
        return self._post("/pose", fields, upload, check_persons)

    def submit_video_job(
        self,
        *,
        video_url: str | None = None,
        file: FileInput | None = None,
        smoothing: bool = True,
        callback_url: str | None = None,
    ) -> str:
        """Start a video analysis job: ``POST /pose/job``; returns the ``job_id``.

        :param video_url: an http(s) URL the service fetches.
        :param file: a path, bytes or a binary file object to upload.
        :param smoothing: smooth keypoint positions between frames (the service's default is true).
        :param callback_url: the service calls ``callback_url?job_id=…`` once when the job ends.
        """
        one_of(video_url, file, "video_url", "video")
        if not isinstance(smoothing, bool):
            raise KakaoPoseInputError(f"smoothing must be True or False, not {smoothing!r}")
        upload = read_upload(file, "video") if file is not None else None
        check_video_input(video_url, upload, callback_url, self.settings, self.limits)
        fields = {"smoothing": "true" if smoothing else "false"}
        if video_url is not None:
            fields["video_url"] = video_url
        if callback_url is not None:
            fields["callback_url"] = callback_url
        return self._post("/pose/job", fields, upload, check_job_id, resend_if_unsure=False)

    def _post(
        self,
        path: str,
        fields: dict[str, str] | None,
        upload: Upload | None,
        check: Callable[[Any, str, str], Any],
        **options: Any,
    ) -> Any:
        """``POST path`` (form ``fields``, an optional file ``upload``); the JSON answer checked by ``check``."""
        return self._request(
            "POST",
            path,
            fields=fields,
            upload=upload,
            parse=lambda body: check(parse_json(body, "POST", path), "POST", path),
            **options,
        )

    def get_job(self, job_id: str) -> dict:
        """The job's body as the service returns it, whatever the status: ``GET /pose/job/{job_id}``.

        On success that is the whole result, parsed into Python objects (several times its size in memory):
        to wait for a job use :meth:`get_job_status`; to load a result use :meth:`get_job_bytes` and the tables.
        """
        path = job_path(job_id)
        return self._request("GET", path, parse=lambda body: check_job(parse_json(body, "GET", path), "GET", path))

    def get_job_status(self, job_id: str) -> dict:
        """The job's top-level fields without its result: ``{"job_id", "status", "description"?, …}``.

        The body is streamed through a scanner that keeps only its top-level scalars (constant memory) and
        stops reading once the status is known; nested values (``annotations``, ``video``, …) are ``None``.
        Use it to wait for a job; :meth:`get_job_bytes` fetches the result.
        """
        path = job_path(job_id)
        return self._request("GET", path, parse=lambda top: check_job(top, "GET", path), status_only=True)

    def get_job_bytes(self, job_id: str) -> bytes:
        """The job's body as raw JSON bytes, unparsed: the fast path for large results (see the tables).

        The whole body is held in memory; for large results use :meth:`download_job` into a
        :class:`~airflow_provider_kakaopose.tables.BodySpool` instead.
        """
        return self._request("GET", job_path(job_id))

    def download_job(self, job_id: str, sink: BinarySink) -> int:
        """Write the job's body into ``sink`` as it arrives, chunk by chunk; return its size in bytes.

        ``sink`` is a binary file opened for writing: best a seekable one, or a
        :class:`~airflow_provider_kakaopose.tables.BodySpool` (a temporary file that also pre-scans the
        result for the tables). The body is never held whole in memory. Failures are retried with the
        connection's retry settings:

        * a seekable sink is emptied (``seek(0)``, ``truncate()``) before each attempt, so a download cut off
          mid-body starts over from the first byte like any transport error;
        * a sink that cannot be emptied (a pipe, a socket, an object with only ``write``) is retried as long
          as nothing has been written into it: non-2xx answers (5xx, 429, …) and connections that fail before
          the body starts write nothing. Once part of the body is in it, a break is not retried (a retry would
          append a second copy): :class:`~airflow_provider_kakaopose.exceptions.KakaoPoseConnectionError`
          with ``retryable=False``, saying how many bytes were written.

        Non-2xx answers that are not retried, or whose retries ran out, raise as for :meth:`get_job_bytes`.
        """
        return self._request("GET", job_path(job_id), parse=lambda size: size, sink=sink)

    def test_connection(self) -> tuple[bool, str]:
        """Check host and key by looking up a job id that cannot exist: no analysis quota is spent."""
        try:
            settings = self._settings_from(self.get_connection(self.kakao_pose_conn_id))
            probe = ConnSettings(**{**settings.__dict__, "max_retries": min(settings.max_retries, 1)})
            path = job_path(PROBE_JOB_ID)
            self._request(
                "GET", path, settings=probe, parse=lambda body: check_job(parse_json(body, "GET", path), "GET", path)
            )
        except KakaoPoseAuthError as err:
            return False, f"The service refused the REST API key: {err}"
        except KakaoPoseConnectionError as err:
            return False, f"Cannot reach the Pose API: {err}"
        except Exception as err:
            return False, f"Connection check failed: {err}"
        return True, f"Connected to {settings.base_url}; the REST API key was accepted"


class _LoopSessions:
    """One aiohttp session per event loop, shared by every async hook on that loop (reference counted).

    A triggerer runs all its triggers on one loop: a thousand waiting jobs then share one connection pool
    instead of holding a thousand sessions.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = weakref.WeakKeyDictionary()

    def acquire(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._by_loop.get(loop)
        if entry is None or entry[0].closed:
            connector = aiohttp.TCPConnector(limit=100, limit_per_host=100)
            entry = [_new_async_session(connector), 0]
            self._by_loop[loop] = entry
        entry[1] += 1
        return entry[0]

    async def release(self, session: Any) -> None:
        entry = self._by_loop.get(asyncio.get_running_loop())
        if entry is None or entry[0] is not session:
            await session.close()
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._by_loop[asyncio.get_running_loop()]
            await session.close()


_SESSIONS = _LoopSessions()
_LIMITERS: dict[tuple[str, str, float | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_rate_limiter(settings: ConnSettings, conn_id: str) -> RateLimiter:
    """The process-wide limiter of one connection, shared by every async hook (and so every trigger)."""
    key = (conn_id, settings.base_url, settings.rate_limit_per_second)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = new_rate_limiter(settings)
        return limiter


class KakaoPoseAsyncHook(_KakaoPoseHookBase):
    """Asynchronous client (aiohttp) for polling jobs from a trigger, with the sync hook's retry rules.

    The connection is looked up asynchronously, so nothing blocks the triggerer's event loop. Use it as an
    async context manager: all hooks entered on one event loop share one HTTP session (one connection pool),
    and all async hooks of one connection in a process share one rate limiter, so many triggers together
    stay under ``rate_limit_per_second``. Without ``async with``, each call opens and closes its own session.
    """

    @functools.cached_property
    def _settings_lock(self) -> asyncio.Lock:
        return asyncio.Lock()  # made on first use, in the event loop that uses it

    async def get_settings(self) -> ConnSettings:
        """The connection's parsed settings, looked up without blocking the event loop."""
        async with self._settings_lock:  # concurrent first calls must share one limiter
            if self._settings is None:
                from airflow_provider_kakaopose._compat import get_async_connection, get_async_extra_dejson

                conn = await get_async_connection(self.kakao_pose_conn_id, self)
                settings = self._settings_from(conn, extra=await get_async_extra_dejson(conn))
                self._rate_limiter = shared_rate_limiter(settings, self.kakao_pose_conn_id)
                self._settings = settings
        return self._settings

    async def __aenter__(self) -> KakaoPoseAsyncHook:
        self._session = _SESSIONS.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Give back the shared session (closed when its last user leaves)."""
        if self._session is not None:
            session, self._session = self._session, None
            await _SESSIONS.release(session)

    async def _request(
        self, method: str, path: str, parse: Callable[[Any], Any] = bytes, *, status_only: bool = False
    ) -> Any:
        """The async twin of :meth:`KakaoPoseHook._request` (GET only: triggers poll, they never submit)."""
        import aiohttp

        s = await self.get_settings()
        limiter = self._rate_limiter
        assert limiter is not None
        call = _Call(method, path, s, parse, status_only=status_only)
        timeout = aiohttp.ClientTimeout(sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        own = self._session is None
        session = _new_async_session() if own else self._session
        try:
            async for retry in AsyncRetrying(**retry_kwargs(s, self.log, call.what)):
                with retry:
                    return await self._attempt(call, session, limiter, timeout)
        finally:
            if own:
                await session.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _attempt(call: _Call, session: Any, limiter: RateLimiter, timeout: Any) -> Any:
        """One try of ``call`` (the sync hook's :meth:`~KakaoPoseHook._attempt`, on aiohttp)."""
        import aiohttp

        call.attempts += 1
        await limiter.acquire_async()
        s = call.settings
        try:
            async with session.request(
                call.method, s.base_url + call.path, headers=s.auth_header, timeout=timeout
            ) as resp:
                status, headers = resp.status, resp.headers
                if call.status_only and 200 <= status < 300:
                    value = await _scan_status_async(resp, call.what)
                    body = b""
                else:
                    body = value = await resp.read()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as err:
            raise _with_attempts(transport_error(call.method, call.path, s.base_url, err), call.attempts) from None
        except aiohttp.ClientError as err:
            raise KakaoPoseError(f"{call.what} to {s.base_url} failed: {err}") from None
        except KakaoPoseError as err:  # the status reader's
            err.status_code = status
            raise _with_attempts(err, call.attempts) from None
        return _check_answer(call, limiter, status, headers, body, value)

    async def get_job(self, job_id: str) -> dict:
        """The job's whole body, parsed, whatever the status: ``GET /pose/job/{job_id}``.

        On success that is the whole result (it can be hundreds of MB, parsed on the event loop): to wait
        for a job, use :meth:`get_job_status`.
        """
        path = job_path(job_id)
        return await self._request(
            "GET", path, parse=lambda body: check_job(parse_json(body, "GET", path), "GET", path)
        )

    async def get_job_status(self, job_id: str) -> dict:
        """The job's top-level fields without its result: ``{"job_id", "status", "description"?, …}``.

        The body is read in chunks and scanned (about 1 ms per MB on the event loop between reads); nothing
        but its top-level scalars is kept, and reading stops once the status is known. Nested values (the
        result's ``annotations``, ``video``, …) are ``None``.
        """
        path = job_path(job_id)
        return await self._request("GET", path, parse=lambda top: check_job(top, "GET", path), status_only=True)


# ------------------------------------------------------------------------------------ one request's steps

#: What requests raises when the connection fails, times out or breaks mid-body: retryable transport errors.
_REQUESTS_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass
class _Call:
    """One logical request across its attempts: what to send, how to read the answer, what to return."""

    method: str
    path: str
    settings: ConnSettings
    #: Turns the 2xx answer's :data:`ParseInput` into the call's result.
    parse: Callable[[Any], Any] = bytes
    fields: dict[str, str] | None = None
    upload: Upload | None = None
    resend_if_unsure: bool = True
    status_only: bool = False
    download: _Download | None = None
    breaker: UnreachableBreaker | None = None
    attempts: int = 0

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def streams(self) -> bool:
        """Whether a 2xx body is read in chunks (scanned or downloaded) rather than whole."""
        return self.status_only or self.download is not None


def _check_answer(
    call: _Call, limiter: RateLimiter, status: int, headers: Mapping[str, str], body: bytes, value: ParseInput
) -> Any:
    """``call.parse(value)`` for a 2xx answer; else (or when parse fails) raise the mapped error, with the
    HTTP status and the attempts, slowing the limiter down on a quota answer. Both hooks' last step."""
    try:
        check_response(call.method, call.path, status, headers, body)
        result = call.parse(value)
    except KakaoPoseError as err:
        if err.status_code is None:
            err.status_code = status
        if not call.resend_if_unsure and answer_leaves_outcome_unknown(err):
            err = outcome_unknown(err)
        raise _with_attempts(_settle_error(limiter, err), call.attempts) from None
    limiter.on_success()
    return result


def _scan_status(chunks: Iterable[bytes], what: str) -> dict[str, Any]:
    """Feed a 2xx job body through a :class:`JobStatusReader` until the status is known; its top-level fields."""
    reader = JobStatusReader(what)
    for chunk in chunks:
        if reader.feed(chunk):
            break
    return reader.fields()


async def _scan_status_async(resp: Any, what: str) -> dict[str, Any]:
    """:func:`_scan_status` on an aiohttp answer; the connection is dropped once the status is known."""
    reader = JobStatusReader(what)
    async for chunk in resp.content.iter_chunked(STATUS_CHUNK):
        if reader.feed(chunk):
            resp.close()  # the rest of the body is not needed: drop the connection
            break
    return reader.fields()


#: Bytes read from the socket at a time when a body is downloaded into a sink.
DOWNLOAD_CHUNK = 1 << 20


class _Download:
    """One download's sink, across the attempts of its request.

    Before each attempt the sink is emptied (``seek(0)``, ``truncate()``). A sink that cannot be emptied (a
    pipe, a socket, an object with only ``write``) is only usable again while ``written`` (bytes this download
    put into it, all attempts together) is 0.
    """

    def __init__(self, sink: BinarySink, what: str) -> None:
        self.sink = sink
        self.what = what
        self.written = 0
        self.cannot_empty: str | None = None  # why the sink cannot be emptied, once a try failed

    def start(self) -> None:
        """Make the sink ready for a new attempt; raise if it holds bytes it cannot get rid of."""
        try:
            self.sink.seek(0)  # type: ignore[attr-defined]  # absent on a pipe: AttributeError, handled below
            self.sink.truncate()  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError) as err:
            self.cannot_empty = f"{type(err).__name__}: {err}"
            if self.written:  # a safety net: a break after bytes were written already raised (see _download)
                raise self.not_retried("by an earlier attempt") from None
        else:
            self.written = 0

    def not_retried(self, cause: str) -> KakaoPoseConnectionError:
        return KakaoPoseConnectionError(
            f"{self.what}: the download was cut off after {self.written} bytes had been written into "
            f"{self.sink!r} ({cause}); that sink cannot be emptied ({self.cannot_empty}), so it is not retried "
            "(a retry would append a second copy). Download into a seekable file or a BodySpool to have such "
            "breaks retried.",
            retryable=False,
        )


def _download(resp: requests.Response, download: _Download) -> int:
    """Write a 2xx body into the download's sink chunk by chunk (emptied first); return the bytes written."""
    download.start()
    sink, size = download.sink, 0
    try:
        for chunk in resp.iter_content(DOWNLOAD_CHUNK):
            sink.write(chunk)
            size += len(chunk)
            download.written += len(chunk)
    except _REQUESTS_TRANSPORT_ERRORS as err:
        if download.written and download.cannot_empty is not None:
            raise download.not_retried(type(err).__name__) from None
        raise  # nothing in the sink, or it is emptied by the retry: a transport error like any other
    return size


def _may_have_arrived(err: BaseException) -> bool:
    """False only when the connection was never made (refused, DNS, connect timeout): safe to resend."""
    return not never_connected(err)


def _settle_error(limiter: RateLimiter, err: KakaoPoseError) -> KakaoPoseError:
    if isinstance(err, KakaoPoseQuotaError):
        limiter.on_quota()
    return err


def _with_attempts(err: KakaoPoseError, attempts: int) -> KakaoPoseError:
    err.attempts = attempts
    return err
