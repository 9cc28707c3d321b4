"""A loopback HTTP server that answers like the Kakao Brain Pose API (aiohttp.web, no Airflow).

See ``docs/emulator.md`` for the knobs and for what it does not model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from aiohttp import BodyPartReader, ClientSession, ClientTimeout, TCPConnector, web

from airflow_provider_kakaopose.validation import (
    DEFAULT_LIMITS,
    Limits,
    check_image_bytes,
    check_url,
    check_video_size,
    sniff_image,
)

from . import synth
from .engine import ENGINE_INFO, ENGINE_NAMES, EngineInputError, make_engine

log = logging.getLogger(__name__)

#: Faults a request can be given at random (``fault_kinds``) or by script (``script_faults``).
RANDOM_FAULT_KINDS = ("500", "503", "drop", "slow", "malformed", "error-1")
#: "502" and "504" answer like a gateway in front of the service: an HTML page, no JSON.
#: "cut" sends the normal answer's headers (its full Content-Length) and half its body, then closes the connection.
#: "ok" answers normally (a scripted request without a fault, to place a fault later in the sequence).
SCRIPT_FAULT_KINDS = (*RANDOM_FAULT_KINDS, "quota", "429", "401", "502", "504", "cut", "ok")
#: Bodies larger than this (finished jobs' results) are sent in slices of STREAM_SLICE_BYTES.
STREAM_BODY_BYTES = 4 << 20
STREAM_SLICE_BYTES = 1 << 20
QUOTA_MODES = ("kakao", "429")
#: Pixel size the emulator assumes for an ``image_url`` (it never fetches the URL).
URL_IMAGE_SIZE = (1280, 720)
#: Jobs whose result has more person-frames than this are generated in worker subprocesses.
BIG_JOB_PERSON_FRAMES = 30_000
WORKER_PROCESSES = max(1, min(4, os.cpu_count() or 1))
#: Cached success bodies are dropped, oldest first, beyond this many bytes (they are rebuilt on demand).
RESULT_CACHE_BYTES = 1024 * 1024 * 1024
_KNOWN_SCHEMES = {"kakaoak": "KakaoAK", "bearer": "Bearer", "basic": "Basic", "token": "Token", "digest": "Digest"}
_VIDEO_URL_KNOBS = ("frames", "persons", "fps", "width", "height")
#: ``video_url`` knobs that override ``job_waiting_s`` / ``job_processing_s`` for one job.
_VIDEO_URL_TIMING_KNOBS = ("waiting_s", "processing_s")


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    raise ValueError(f"{name} must be a list of strings or a comma-separated string, not {value!r}")


@dataclass(frozen=True)
class EmulatorConfig:
    """Every knob of the emulator; see docs/emulator.md. The repr masks the API key."""

    api_key: str | None = field(default=None, repr=False)
    latency: float = 0.0
    quota_per_second: int | None = None
    quota_mode: str = "kakao"
    retry_after: float | None = None
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = RANDOM_FAULT_KINDS
    slow_seconds: float = 20.0
    seed: int | None = None
    job_waiting_s: float = 0.5
    job_processing_s: float = 1.5
    job_frames: int = 90
    unreachable_hosts: tuple[str, ...] = ("*.invalid", "*unreachable*")
    #: Accept a callback_url on any port (the service only *recommends* 443); False = http:80/https:443 only.
    callback_any_port: bool = True
    #: Share of job-end callbacks never sent (the real service never re-sends a failed one).
    callback_drop_rate: float = 0.0
    #: Share of job-end callbacks sent twice (a duplicate, as a retrying proxy could make).
    callback_duplicate_rate: float = 0.0
    #: Seconds between a job's end and its callback (a slow or queued callback sender).
    callback_delay_s: float = 0.0
    limits: Limits = DEFAULT_LIMITS
    host: str = "127.0.0.1"
    port: int = 0
    #: "synthetic" (invented poses, the default) or "mediapipe" (a real model; needs ``make engine``).
    engine: str = "synthetic"
    #: Threads running the model, for images and for video jobs each (``engine="mediapipe"`` only).
    engine_workers: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "fault_kinds", _as_tuple(self.fault_kinds, "fault_kinds"))
        set_(self, "unreachable_hosts", _as_tuple(self.unreachable_hosts, "unreachable_hosts"))
        if isinstance(self.limits, dict):
            set_(self, "limits", Limits(**self.limits))
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if self.quota_mode not in QUOTA_MODES:
            raise ValueError(f"quota_mode must be one of {QUOTA_MODES}, not {self.quota_mode!r}")
        bad = [k for k in self.fault_kinds if k not in SCRIPT_FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; known: {', '.join(SCRIPT_FAULT_KINDS)}")
        if not 0.0 <= float(self.fault_rate) <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, not {self.fault_rate!r}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.quota_per_second is not None and self.quota_per_second < 0:
            raise ValueError("quota_per_second must be >= 0 or None")
        for name in ("callback_drop_rate", "callback_duplicate_rate"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)!r}")
        for name in ("latency", "slow_seconds", "job_waiting_s", "job_processing_s", "callback_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0 or None")
        if self.job_frames < 0:
            raise ValueError("job_frames must be >= 0")
        if self.engine not in ENGINE_NAMES:
            raise ValueError(f"engine must be one of {ENGINE_NAMES}, not {self.engine!r}")
        if not isinstance(self.engine_workers, int) or self.engine_workers < 1:
            raise ValueError(f"engine_workers must be an integer >= 1, not {self.engine_workers!r}")

    def __repr__(self) -> str:
        fields = [f"api_key={'***' if self.api_key else None}"]
        fields += [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.name != "api_key"]
        return f"EmulatorConfig({', '.join(fields)})"

    def public_dict(self) -> dict[str, Any]:
        """The knobs as JSON-able values, the API key masked."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["api_key"] = "***" if self.api_key else None
        d["fault_kinds"] = list(self.fault_kinds)
        d["unreachable_hosts"] = list(self.unreachable_hosts)
        d["limits"] = dataclasses.asdict(self.limits)
        return d


@dataclass
class RecordedRequest:
    """One request the emulator received (control endpoints excluded). Never holds the API key."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    fields: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    file_size: int | None = None
    auth_ok: bool = False
    authorization_scheme: str | None = None
    status: int | None = None
    fault: str | None = None
    time: float = 0.0
    #: The request arrived over the per-second quota (and was refused with the quota answer).
    over_quota: bool = False
    #: The client's ``User-Agent`` and ``Accept`` headers as sent (None when absent).
    user_agent: str | None = None
    accept: str | None = None


@dataclass
class _Job:
    job_id: str
    created: float
    waiting_s: float
    processing_s: float
    spec: synth.VideoSpec | None  # None: the job fails
    key: str
    callback_url: str | None
    description: str = "Failed to get video"
    #: Engine jobs: the state the worker set (overrides the timeline) and the finished body.
    state: str | None = None
    body: bytes | None = None

    def status(self, now: float) -> str:
        if self.state is not None:
            return self.state
        t = now - self.created
        if t < self.waiting_s:
            return "waiting"
        if self.spec is None:
            return "failed"
        if t < self.waiting_s + self.processing_s:
            return "processing"
        return "success"

    @property
    def end_time(self) -> float:
        return self.created + self.waiting_s + (self.processing_s if self.spec is not None else 0.0)


class _BadRequest(Exception):
    """A -2 answer (missing or invalid parameter)."""


class _Drop(Exception):
    """Close the connection without answering."""


class _FetchError(Exception):
    """An image_url / video_url the engine could not read."""


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"code": code, "msg": msg}, headers)


def _fmt_seconds(s: float) -> str:
    return str(int(s)) if float(s).is_integer() else f"{s:g}"


class PoseEmulator:
    """The Pose API on loopback, in a background thread with its own event loop.

    ``PoseEmulator(**knobs)`` or ``PoseEmulator(config=EmulatorConfig(...))``; use as a context manager or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(self, config: EmulatorConfig | None = None, **knobs: Any):
        if config is not None and knobs:
            config = dataclasses.replace(config, **knobs)
        self._config = config if config is not None else EmulatorConfig(**knobs)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script: deque[str] = deque()
        self._callbacks: list[tuple[str, int | str]] = []
        self._jobs: dict[str, _Job] = {}
        self._results: OrderedDict[str, bytes] = OrderedDict()
        self._building: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reseed(self._config.seed)
        self._window = (0, 0)  # (second, count)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._t0 = time.monotonic()
        self._engine: Any = None
        self._image_pool: ThreadPoolExecutor | None = None
        self._job_pool: ThreadPoolExecutor | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host = self._config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def callbacks_sent(self) -> list[tuple[str, int | str]]:
        with self._lock:
            return list(self._callbacks)

    def clear_requests(self) -> int:
        with self._lock:
            n = len(self._requests)
            self._requests.clear()
            return n

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many recorded requests match ``method`` and ``path`` (``None`` matches any)."""
        return sum(
            1 for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)
        )

    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at runtime (thread-safe). ``host`` and ``port`` only apply at the next start."""
        unknown = set(knobs) - {f.name for f in dataclasses.fields(EmulatorConfig)}
        if unknown:
            raise ValueError(f"unknown emulator knobs: {', '.join(sorted(unknown))}")
        with self._lock:
            self._config = dataclasses.replace(self._config, **knobs)
            if "seed" in knobs:
                self._reseed(self._config.seed)
            return self._config

    def script_faults(self, kinds: Iterable[str]) -> None:
        """Give the next requests (in arrival order, control endpoints excluded) these faults, one each."""
        kinds = list(kinds) if not isinstance(kinds, str) else [kinds]
        bad = [k for k in kinds if k not in SCRIPT_FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; known: {', '.join(SCRIPT_FAULT_KINDS)}")
        with self._lock:
            self._script.extend(kinds)

    def start(self) -> PoseEmulator:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        cfg = self._config
        self._engine = make_engine(cfg.engine)  # loads the model (or raises EngineUnavailable) before binding
        if self._engine is not None:
            self._image_pool = ThreadPoolExecutor(cfg.engine_workers, thread_name_prefix="pose-engine-image")
            self._job_pool = ThreadPoolExecutor(cfg.engine_workers, thread_name_prefix="pose-engine-job")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as err:
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                # Handlers still in flight (e.g. a "slow" fault) are cancelled, not left to die with the loop.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="kakao-pose-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._close_engine()
            raise failure[0]
        return self

    def _close_engine(self) -> None:
        for pool in (self._image_pool, self._job_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._image_pool = self._job_pool = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def stop(self) -> None:
        """Stop serving: pending jobs' callbacks are cancelled, open connections closed."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        self._loop = None
        self.port = None
        self._close_engine()

    def __enter__(self) -> PoseEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.port is not None else "stopped"
        return f"<PoseEmulator {where} {self._config!r}>"

    # ------------------------------------------------------------------ lifecycle (emulator loop)

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/_emulator/health", self._ctl_health)
        app.router.add_get("/_emulator/requests", self._ctl_requests)
        app.router.add_delete("/_emulator/requests", self._ctl_clear)
        app.router.add_post("/_emulator/config", self._ctl_config)
        app.router.add_get("/_emulator/config", self._ctl_get_config)
        app.router.add_post("/_emulator/faults", self._ctl_faults)
        app.router.add_get("/_emulator/callbacks", self._ctl_callbacks)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port, backlog=4096, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = ClientSession(
            timeout=ClientTimeout(total=10), connector=TCPConnector(limit=0, force_close=True)
        )

    async def _astop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ randomness

    def _reseed(self, seed: int | None) -> None:
        self._fault_rng = random.Random(seed)
        self._callback_rng = random.Random(seed)
        self._id_rng = random.Random(seed) if seed is not None else None

    def _new_job_id(self) -> str:
        if self._id_rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def _content_key(self, kind: str, content: bytes | str) -> str:
        seed = self._config.seed if self._config.seed is not None else 0
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{seed}\0{kind}\0".encode())
        h.update(content if isinstance(content, bytes) else content.encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ control endpoints

    async def _ctl_health(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok", "requests": len(self._requests), "jobs": len(self._jobs)})

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return _json(200, [dataclasses.asdict(r) for r in self.requests])

    async def _ctl_clear(self, request: web.Request) -> web.Response:
        return _json(200, {"cleared": self.clear_requests()})

    async def _ctl_get_config(self, request: web.Request) -> web.Response:
        return _json(200, self._config.public_dict())

    async def _ctl_config(self, request: web.Request) -> web.Response:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise ValueError("the body must be a JSON object of knobs")
            config = self.configure(**knobs)
        except (ValueError, TypeError) as err:
            return _error(400, -2, str(err))
        return _json(200, config.public_dict())

    async def _ctl_faults(self, request: web.Request) -> web.Response:
        try:
            kinds = await request.json()
            if not isinstance(kinds, list):
                raise ValueError("the body must be a JSON list of fault kinds")
            self.script_faults(kinds)
        except ValueError as err:
            return _error(400, -2, str(err))
        with self._lock:
            return _json(200, {"scripted": list(self._script)})

    async def _ctl_callbacks(self, request: web.Request) -> web.Response:
        return _json(200, [list(c) for c in self.callbacks_sent])

    # ------------------------------------------------------------------ the API

    def _arrival(self, request: web.Request) -> tuple[RecordedRequest, str | None, bool]:
        """Record the request, pick its fault and count it against the quota (all at arrival)."""
        cfg = self._config
        now = time.monotonic()
        header = request.headers.get("Authorization")
        scheme, auth_ok = None, False
        if header is not None:
            parts = header.strip().split(None, 1)
            word = parts[0] if parts else ""
            # Record a scheme only if it is a known word: a bare key sent without a scheme must not be stored.
            scheme = _KNOWN_SCHEMES.get(word.lower(), "<other>") if len(parts) == 2 else None
            if word == "KakaoAK" and len(parts) == 2 and parts[1].strip():
                key = parts[1].strip()
                auth_ok = cfg.api_key is None or hmac.compare_digest(key.encode(), cfg.api_key.encode())
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query={k: v for k, v in request.query.items()},
            content_type=request.headers.get("Content-Type"),
            auth_ok=auth_ok,
            authorization_scheme=scheme,
            time=now,
            user_agent=request.headers.get("User-Agent"),
            accept=request.headers.get("Accept"),
        )
        with self._lock:
            self._requests.append(rec)
            fault = self._script.popleft() if self._script else None
            if fault == "ok":
                fault = ""  # scripted: no fault, and no random one either
            if fault is None and cfg.fault_rate > 0 and self._fault_rng.random() < cfg.fault_rate:
                fault = self._fault_rng.choice(cfg.fault_kinds)
            second = int(now - self._t0)
            count = self._window[1] + 1 if self._window[0] == second else 1
            self._window = (second, count)
        over_quota = cfg.quota_per_second is not None and count > cfg.quota_per_second
        rec.fault = fault or None
        return rec, fault or None, over_quota

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec, fault, over_quota = self._arrival(request)
        cfg = self._config
        try:
            try:
                form = await self._read_form(request, rec)
                bad = None
            except _BadRequest as err:
                form, bad = None, str(err)
            if cfg.latency > 0:
                await asyncio.sleep(cfg.latency)
            if fault == "slow":
                await asyncio.sleep(cfg.slow_seconds)
                fault = None
            response: web.StreamResponse | None = self._fault_response(fault, request.path, cfg) if fault else None
            if response is None and over_quota:
                rec.over_quota = True
                response = self._quota_response(cfg.quota_mode, cfg)
            if response is None and not rec.auth_ok:
                response = _error(401, -401, "this access token does not exist")
            if response is None and bad is not None:
                response = _error(400, -2, bad)
            if response is None:
                response = await self._route(request, form, cfg)
            if fault == "cut" and isinstance(response, web.Response) and response.body:
                await self._cut(request, response)
                rec.status = response.status
                raise asyncio.CancelledError()
        except _Drop:
            rec.status = None
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from None
        rec.status = response.status
        if (
            isinstance(response, web.Response)
            and isinstance(response.body, bytes)
            and len(response.body) > STREAM_BODY_BYTES
        ):
            return await self._stream(request, response)
        return response

    @staticmethod
    async def _stream(request: web.Request, response: web.Response) -> web.StreamResponse:
        """Send a large body in slices, as a server streams a file: the event loop's transport then buffers one
        slice at a time instead of a copy of the whole body per request."""
        body = memoryview(response.body)  # type: ignore[arg-type]
        stream = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
        stream.content_length = len(body)
        await stream.prepare(request)
        for start in range(0, len(body), STREAM_SLICE_BYTES):
            await stream.write(body[start : start + STREAM_SLICE_BYTES])
        await stream.write_eof()
        return stream

    @staticmethod
    async def _cut(request: web.Request, response: web.Response) -> None:
        """Send ``response``'s status, headers (its full length) and the first half of its body, then close the
        connection (after those bytes went out: not an abort, which would discard them)."""
        body = bytes(response.body)  # type: ignore[arg-type]
        stream = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()

    def _fault_response(self, fault: str, path: str, cfg: EmulatorConfig) -> web.Response | None:
        retry = {"Retry-After": _fmt_seconds(cfg.retry_after)} if cfg.retry_after is not None else None
        if fault == "500":
            return _error(500, -1, "Internal Server Error (emulated fault)")
        if fault == "503":
            return _error(503, -1, "Service Unavailable (emulated fault)", retry)
        if fault in ("502", "504"):
            reason = "Bad Gateway" if fault == "502" else "Gateway Time-out"
            page = f"<html><head><title>{fault} {reason}</title></head><body><h1>{fault} {reason}</h1></body></html>"
            return web.Response(status=int(fault), text=page, content_type="text/html")
        if fault == "error-1":
            return _error(400, -1, "internal error (emulated fault)")
        if fault == "malformed":
            body = b'[{"area": 101090.2833, "bbox": [719.45' if path == "/pose" else b'{"job_id": "bb91c265-341d'
            return web.Response(status=200, body=body, content_type="application/json")
        if fault == "quota":
            return self._quota_response("kakao", cfg)
        if fault == "429":
            return self._quota_response("429", cfg)
        if fault == "401":
            return _error(401, -401, "this access token does not exist")
        if fault == "drop":
            raise _Drop()
        return None

    def _quota_response(self, mode: str, cfg: EmulatorConfig) -> web.Response:
        if mode == "429":
            retry = _fmt_seconds(cfg.retry_after) if cfg.retry_after is not None else "1"
            return _error(429, -10, "API limit has been exceeded.", {"Retry-After": retry})
        return _error(400, -10, "API limit has been exceeded.")

    async def _read_form(self, request: web.Request, rec: RecordedRequest) -> dict[str, Any] | None:
        """The form of a POST: text fields, plus ``_file`` = (name, size, head bytes or full image bytes)."""
        if request.method != "POST":
            return None
        ctype = request.content_type
        if ctype == "application/x-www-form-urlencoded":
            try:
                post = await request.post()
            except Exception as err:
                raise _BadRequest(f"could not read the form body ({err})") from err
            rec.fields = {k: str(v) for k, v in post.items()}
            return dict(rec.fields)
        if ctype == "multipart/form-data":
            form: dict[str, Any] = {}
            try:
                reader = await request.multipart()
                while (part := await reader.next()) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise _BadRequest("could not read the multipart body (a nested multipart part)")
                    name = part.name or ""
                    if name == "file" or part.filename is not None:
                        if name != "file" or "_file" in form:
                            # Drain it, but it is not a field the API knows.
                            while await part.read_chunk():
                                pass
                            if name == "file":
                                raise _BadRequest("give one file, not several")
                            continue
                        form["_file"] = await self._read_file_part(part, request.path)
                        rec.file_name = part.filename
                        rec.file_size = form["_file"][1]
                    else:
                        value = (await part.read()).decode("utf-8", "replace")
                        rec.fields[name] = value
                        form[name] = value
            except _BadRequest:
                raise
            except Exception as err:
                raise _BadRequest(f"could not read the multipart body ({err})") from err
            return form
        if ctype in ("", "application/octet-stream") and not request.can_read_body:
            return {}
        raise _BadRequest(
            f"Content-Type {ctype or 'none'!r} is not supported: send application/x-www-form-urlencoded"
            " (image_url/video_url) or multipart/form-data (file)"
        )

    async def _read_file_part(self, part: BodyPartReader, path: str) -> tuple[str, int, bytes]:
        """(file name, size, bytes): all bytes of an image (up to limit + 1 MB), the first MB of a video.

        With an engine, all bytes of a video too (up to its limit + 1 MB): the engine decodes them.
        """
        limits = self._config.limits
        if path == "/pose":
            keep = limits.max_image_bytes + 1024 * 1024
        elif self._engine is not None:
            keep = limits.max_video_bytes + 1024 * 1024
        else:
            keep = 1024 * 1024
        chunks: list[bytes] = []
        kept = size = 0
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            if kept < keep:
                chunks.append(chunk[: keep - kept])
                kept += len(chunks[-1])
        return part.filename or "file", size, b"".join(chunks)

    async def _route(self, request: web.Request, form: dict | None, cfg: EmulatorConfig) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/pose":
            if method != "POST":
                return _error(405, -2, f"{method} is not allowed on /pose; use POST")
            return await self._pose(form or {}, cfg)
        if path == "/pose/job":
            if method != "POST":
                return _error(405, -2, f"{method} is not allowed on /pose/job; use POST")
            return self._submit(form or {}, cfg)
        if path.startswith("/pose/job/") and path.count("/") == 3 and len(path) > len("/pose/job/"):
            if method != "GET":
                return _error(405, -2, f"{method} is not allowed on {path}; use GET")
            return await self._job(path[len("/pose/job/") :])
        return _error(404, -2, f"no such API: {method} {path}")

    @staticmethod
    def _one_source(form: dict, url_field: str) -> tuple[str | None, tuple[str, int, bytes] | None]:
        url, file = form.get(url_field), form.get("_file")
        if "file" in form and file is None:
            raise _BadRequest("'file' must be uploaded as multipart/form-data, not sent as a text field")
        if url is not None and file is not None:
            raise _BadRequest(f"give either '{url_field}' or 'file', not both")
        if url is None and file is None:
            raise _BadRequest(f"either '{url_field}' or 'file' is required")
        return url, file

    async def _pose(self, form: dict, cfg: EmulatorConfig) -> web.Response:
        try:
            url, file = self._one_source(form, "image_url")
        except _BadRequest as err:
            return _error(400, -2, str(err))
        if self._engine is not None:
            return await self._engine_pose(url, file, cfg)
        if file is not None:
            data = file[2]
            if problems := self._upload_problems(file, cfg):
                return _error(400, -2, "; ".join(problems))
            info = sniff_image(data)
            width, height = (info.width, info.height) if info else URL_IMAGE_SIZE
            key = self._content_key("image", data)
        else:
            assert url is not None  # _one_source gives one of the two
            problems = check_url(url, "image_url")
            if problems:
                return _error(400, -2, "; ".join(problems))
            if self._unreachable(url, cfg):
                return _error(400, -2, f"Failed to get image from image_url {url!r}")
            width, height = URL_IMAGE_SIZE
            key = self._content_key("image_url", url)
        persons = synth.image_persons(synth.stable_rng(key), width, height)
        return _json(200, persons)

    @staticmethod
    def _upload_problems(file: tuple[str, int, bytes], cfg: EmulatorConfig) -> list[str]:
        """The input rules broken by an uploaded image; one larger than the bytes kept is reported by its size."""
        name, size, data = file
        if size > len(data):
            return [f"image {name!r} is {size:,} bytes; the limit is {cfg.limits.max_image_bytes:,} bytes"]
        return check_image_bytes(data, name, cfg.limits)

    async def _engine_pose(
        self, url: str | None, file: tuple[str, int, bytes] | None, cfg: EmulatorConfig
    ) -> web.Response:
        """``POST /pose`` answered by the engine: the image's bytes (uploaded or fetched) through the model."""
        if file is not None:
            data = file[2]
            problems = self._upload_problems(file, cfg)
        else:
            assert url is not None
            if problems := self._check_fetch_url(url, "image_url"):
                return _error(400, -2, "; ".join(problems))
            try:
                data = await self._fetch(url, cfg.limits.max_image_bytes + 1)
            except _FetchError as err:
                return _error(400, -2, f"Failed to get image from image_url {url!r} ({err})")
            problems = check_image_bytes(data, url, cfg.limits)
        if problems:
            return _error(400, -2, "; ".join(problems))
        loop = asyncio.get_running_loop()
        try:
            persons = await loop.run_in_executor(self._image_pool, self._engine.image_persons, data)
        except EngineInputError as err:
            return _error(400, -2, str(err))
        return _json(200, persons, {"X-Pose-Engine": f"{ENGINE_INFO['engine']}; max-persons=1"})

    def _check_fetch_url(self, url: str, what: str) -> list[str]:
        """URL rules of the engine: http(s) on any port (local test servers), or an absolute ``file://`` path."""
        try:
            parts = urlsplit(url)
        except ValueError as err:
            return [f"{what} {url!r} is not a valid URL ({err})"]
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                return [f"{what} {url!r} must be an absolute local path: file:///path/to/file"]
            return []
        return self._check_http_url(url, what, any_port=True)

    async def _fetch(self, url: str, max_bytes: int) -> bytes:
        """The bytes behind an http(s) or file:// URL, at most ``max_bytes`` (more: the first ``max_bytes``)."""
        parts = urlsplit(url)
        if parts.scheme == "file":
            path = unquote(parts.path)

            def read() -> bytes:
                with open(path, "rb") as f:
                    return f.read(max_bytes)

            try:
                return await asyncio.get_running_loop().run_in_executor(None, read)
            except OSError as err:
                raise _FetchError(err.strerror or str(err)) from err
        assert self._session is not None
        try:
            async with self._session.get(url, timeout=ClientTimeout(total=60)) as resp:
                if resp.status != 200:
                    raise _FetchError(f"HTTP {resp.status}")
                chunks, got = [], 0
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    chunks.append(chunk)
                    got += len(chunk)
                    if got >= max_bytes:
                        break
                return b"".join(chunks)[:max_bytes]
        except _FetchError:
            raise
        except Exception as err:
            raise _FetchError(f"{type(err).__name__}: {err}") from err

    def _video_spec(self, url: str | None, cfg: EmulatorConfig, smoothing: bool) -> synth.VideoSpec:
        spec = synth.VideoSpec(frames=cfg.job_frames, persons=1, fps=30.0, width=1280, height=720, smoothing=smoothing)
        if url is None:
            return spec
        query = parse_qs(urlsplit(url).query)
        knobs: dict[str, Any] = {}
        for name in _VIDEO_URL_KNOBS:
            if name not in query:
                continue
            raw = query[name][-1]
            try:
                value = float(raw) if name == "fps" else int(raw)
            except ValueError:
                raise _BadRequest(f"video_url emulator knob {name}={raw!r} is not a number") from None
            lowest = {"frames": 0, "persons": 0, "fps": 1e-3, "width": 16, "height": 16}[name]
            if not (value >= lowest and math.isfinite(value)):
                raise _BadRequest(f"video_url emulator knob {name}={raw!r} must be at least {lowest}")
            knobs[name] = value
        return dataclasses.replace(spec, **knobs)

    @staticmethod
    def _job_timing(url: str | None, cfg: EmulatorConfig) -> tuple[float, float]:
        """``(waiting_s, processing_s)`` of a new job: the knobs, or ``waiting_s=`` / ``processing_s=`` in the URL."""
        timing = {"waiting_s": cfg.job_waiting_s, "processing_s": cfg.job_processing_s}
        query = parse_qs(urlsplit(url).query) if url is not None else {}
        for name in _VIDEO_URL_TIMING_KNOBS:
            if name not in query:
                continue
            raw = query[name][-1]
            try:
                value = float(raw)
            except ValueError:
                raise _BadRequest(f"video_url emulator knob {name}={raw!r} is not a number") from None
            if not (value >= 0 and math.isfinite(value)):
                raise _BadRequest(f"video_url emulator knob {name}={raw!r} must be at least 0")
            timing[name] = value
        return timing["waiting_s"], timing["processing_s"]

    @staticmethod
    def _check_http_url(url: str, what: str, any_port: bool) -> list[str]:
        """The service's URL rules (http:80 / https:443), the port left unchecked when ``any_port``."""
        if any_port:
            try:
                parts = urlsplit(url)
                if parts.port is not None:  # check everything but the port
                    url = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0]).geturl()
            except ValueError as err:
                return [f"{what} {url!r} is not a valid URL ({err})"]
        return check_url(url, what)

    def _unreachable(self, url: str, cfg: EmulatorConfig) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in cfg.unreachable_hosts)

    def _submit(self, form: dict, cfg: EmulatorConfig) -> web.Response:
        try:
            url, file = self._one_source(form, "video_url")
            smoothing_raw = form.get("smoothing")
            smoothing = True
            if smoothing_raw is not None:
                if smoothing_raw.lower() not in ("true", "false"):
                    raise _BadRequest(f"smoothing must be 'true' or 'false', not {smoothing_raw!r}")
                smoothing = smoothing_raw.lower() == "true"
            callback = form.get("callback_url")
            if callback is not None and (
                problems := self._check_http_url(callback, "callback_url", cfg.callback_any_port)
            ):
                raise _BadRequest("; ".join(problems))
            if file is not None:
                name, size, head = file
                if problems := check_video_size(size, name, cfg.limits):
                    raise _BadRequest("; ".join(problems))
                key = self._content_key("video", head + size.to_bytes(8, "little"))
            else:
                assert url is not None  # _one_source gives one of the two
                check = self._check_fetch_url if self._engine is not None else check_url
                if problems := check(url, "video_url"):
                    raise _BadRequest("; ".join(problems))
                key = self._content_key("video_url", url)
            if self._engine is not None:
                return self._engine_submit(url, file, smoothing, callback, cfg)
            spec: synth.VideoSpec | None = self._video_spec(url, cfg, smoothing)
            waiting_s, processing_s = self._job_timing(url, cfg)
        except _BadRequest as err:
            return _error(400, -2, str(err))
        if url is not None and self._unreachable(url, cfg):
            spec = None
        with self._lock:
            job_id = self._new_job_id()
        job = _Job(job_id, time.monotonic(), waiting_s, processing_s, spec, key, callback)
        self._jobs[job_id] = job
        self._spawn(self._finish_later(job))
        return _json(200, {"job_id": job_id})

    def _engine_submit(
        self,
        url: str | None,
        file: tuple[str, int, bytes] | None,
        smoothing: bool,
        callback: str | None,
        cfg: EmulatorConfig,
    ) -> web.Response:
        """A video job for the engine: ``waiting`` until a worker takes it, ``processing``, then done."""
        with self._lock:
            job_id = self._new_job_id()
        job = _Job(job_id, time.monotonic(), 0.0, 0.0, None, "", callback, state="waiting")
        self._jobs[job_id] = job
        self._spawn(self._run_engine_job(job, url, file[2] if file is not None else None, smoothing, cfg))
        return _json(200, {"job_id": job_id})

    async def _run_engine_job(
        self, job: _Job, url: str | None, data: bytes | None, smoothing: bool, cfg: EmulatorConfig
    ) -> None:
        loop = asyncio.get_running_loop()
        tmp = tempfile.mkdtemp(prefix="kakao-pose-job-")
        try:
            path = os.path.join(tmp, "video")
            if url is not None and urlsplit(url).scheme == "file":
                path = unquote(urlsplit(url).path)
                if not os.path.isfile(path):
                    raise _FetchError(f"no such file: {path}")
                if problems := check_video_size(os.path.getsize(path), url, cfg.limits):
                    raise EngineInputError("; ".join(problems))
            else:
                if data is None:
                    assert url is not None
                    data = await self._fetch(url, cfg.limits.max_video_bytes + 1)
                    if problems := check_video_size(len(data), url, cfg.limits):
                        raise EngineInputError("; ".join(problems))
                await loop.run_in_executor(None, _write_file, path, data)
                del data

            def work() -> bytes:
                job.state = "processing"
                return self._engine.video_result_bytes(job.job_id, path, smoothing, cfg.limits)

            job.body = await loop.run_in_executor(self._job_pool, work)
            job.state = "success"
        except asyncio.CancelledError:
            raise
        except _FetchError as err:
            job.description = f"Failed to get video ({err})"
            job.state = "failed"
        except EngineInputError as err:
            job.description = str(err)
            job.state = "failed"
        except Exception as err:  # a model failure must not leave the job processing forever
            log.exception("kakao pose emulator: engine job %s failed", job.job_id)
            job.description = f"Failed to process video ({type(err).__name__}: {err})"
            job.state = "failed"
        finally:
            await loop.run_in_executor(None, shutil.rmtree, tmp, True)
        await self._send_callback(job)

    async def _finish_later(self, job: _Job) -> None:
        await asyncio.sleep(max(0.0, job.end_time - time.monotonic()))
        await self._send_callback(job)

    async def _send_callback(self, job: _Job) -> None:
        """Call the job's callback_url once (or not at all / twice / late, as ``callback_*`` knobs say)."""
        if not job.callback_url or self._session is None:
            return
        cfg = self._config
        sep = "&" if urlsplit(job.callback_url).query else ("" if job.callback_url.endswith("?") else "?")
        url = f"{job.callback_url}{sep}job_id={job.job_id}"
        with self._lock:
            dropped = cfg.callback_drop_rate > 0 and self._callback_rng.random() < cfg.callback_drop_rate
            twice = cfg.callback_duplicate_rate > 0 and self._callback_rng.random() < cfg.callback_duplicate_rate
        if dropped:
            with self._lock:
                self._callbacks.append((url, "dropped"))
            return
        if cfg.callback_delay_s > 0:
            await asyncio.sleep(cfg.callback_delay_s)
        for _ in range(2 if twice else 1):
            await self._call_back(url)

    async def _call_back(self, url: str) -> None:
        assert self._session is not None
        try:
            async with self._session.get(url) as resp:
                outcome: int | str = resp.status
        except Exception as err:  # a callback's failure is ignored, never retried (like the service)
            outcome = f"{type(err).__name__}: {err}"
        with self._lock:
            self._callbacks.append((url, outcome))

    async def _job(self, job_id: str) -> web.Response:
        job = self._jobs.get(job_id)
        if job is None:
            return _json(200, {"job_id": job_id, "status": "not found"})
        status = job.status(time.monotonic())
        if status in ("waiting", "processing"):
            return _json(200, {"job_id": job_id, "status": status})
        if status == "failed":
            return _json(200, {"description": job.description, "job_id": job_id, "status": "failed"})
        body = job.body if job.body is not None else await self._result_bytes(job)
        return web.Response(status=200, body=body, content_type="application/json")

    async def _result_bytes(self, job: _Job) -> bytes:
        body = self._results.get(job.job_id)
        if body is not None:
            self._results.move_to_end(job.job_id)
            return body
        building = self._building.get(job.job_id)
        if building is None:
            building = asyncio.get_running_loop().create_future()
            self._building[job.job_id] = building
            try:
                body = await self._build(job)
            except BaseException as err:
                building.set_exception(err)
                building.exception()  # mark retrieved
                raise
            finally:
                self._building.pop(job.job_id, None)
            building.set_result(body)
            self._results[job.job_id] = body
            total = sum(len(b) for b in self._results.values())
            while total > RESULT_CACHE_BYTES and len(self._results) > 1:
                _, dropped = self._results.popitem(last=False)
                total -= len(dropped)
            return body
        return await asyncio.shield(building)

    async def _build(self, job: _Job) -> bytes:
        spec = job.spec
        assert spec is not None
        if spec.frames * max(spec.persons, 1) <= 3000:
            return synth.video_result_bytes(job.job_id, spec, job.key)
        loop = asyncio.get_running_loop()
        if spec.frames * spec.persons > BIG_JOB_PERSON_FRAMES and synth.block_count(spec) > 1:
            return await loop.run_in_executor(None, _build_in_workers, job.job_id, spec, job.key)
        return await loop.run_in_executor(None, synth.video_result_bytes, job.job_id, spec, job.key)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _build_in_workers(job_id: str, spec: synth.VideoSpec, key: str) -> bytes:
    """Build a big result with several worker subprocesses (one slice of blocks each); in-thread on failure."""
    blocks = synth.block_count(spec)
    n = max(1, min(WORKER_PROCESSES, blocks))
    cuts = [round(i * blocks / n) for i in range(n + 1)]
    request = {"key": key, "spec": dataclasses.asdict(spec)}

    def run(i: int) -> bytes:
        payload = json.dumps({**request, "first": cuts[i], "stop": cuts[i + 1]}).encode()
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_kakaopose.emulator.synth"],
            input=payload,
            capture_output=True,
            check=True,
            timeout=600,
        )
        return done.stdout

    try:
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(run, range(n)))
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("kakao pose emulator: worker processes failed (%s); building in a thread", err)
        return synth.video_result_bytes(job_id, spec, key)
    return synth.video_result_bytes(job_id, spec, key, annotations=b", ".join(p for p in parts if p))
