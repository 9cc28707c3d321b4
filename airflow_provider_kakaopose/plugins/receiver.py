"""The callback receiver: a small FastAPI app the api-server mounts at ``/kakao-pose-callbacks``.

``GET|POST /kakao-pose-callbacks/job-ended?token=<token>&job_id=<id>`` (the service appends ``job_id``). The
route is not behind Airflow's login (the service cannot log in): every request is checked here. A request
counts only when its token is signed by a key of ``[kakao_pose] callback_secret``, has not expired, and its
nonce is bound to this very ``job_id`` (:mod:`airflow_provider_kakaopose.callbacks`). Then, in one atomic
Redis script, the job's short-lived "ended" marker is written and a wake-up published on
:data:`~airflow_provider_kakaopose.callbacks.CHANNEL`; a second call for the same job finds the marker and
changes nothing. The receiver never calls the Pose API and never treats a callback as a result: the waiting
trigger confirms with one status GET.

Answers: 200 (recorded, or a duplicate), 400 (no or malformed ``token`` / ``job_id``), 403 (bad signature,
unknown key, expired), 404 (nonce not bound: kept for :data:`~..callbacks.EARLY_TTL_S` in case the submitter
binds it to this job), 409 (nonce bound to another job), 503 (callbacks not configured here, or Redis down).
The token and the secrets are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from airflow_provider_kakaopose import callbacks

log = logging.getLogger(__name__)

#: Seconds the receiver keeps the settings it read (a rotated secret is seen within this long).
SETTINGS_TTL_S = 30.0


class _State:
    """The receiver's settings (re-read every :data:`SETTINGS_TTL_S`) and one Redis client per event loop."""

    def __init__(self) -> None:
        self.read_at = -SETTINGS_TTL_S
        self.settings: callbacks.CallbackSettings | None = None
        self.store_url: str | None = None
        self.clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def refresh(self) -> None:
        if time.monotonic() - self.read_at < SETTINGS_TTL_S:
            return
        from airflow_provider_kakaopose.hooks._shared_quota import configured_store

        self.settings, self.store_url = callbacks.configured_callbacks(), configured_store()
        self.read_at = time.monotonic()

    def client(self) -> Any:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            assert self.store_url is not None
            client = redis.asyncio.Redis.from_url(
                self.store_url, socket_connect_timeout=1, socket_timeout=2, lib_name=None, lib_version=None
            )
            self.clients[loop] = client
        return client


#: What the Redis script's answer means: (HTTP status, body, log level).
_OUTCOMES: dict[int, tuple[int, str, int]] = {
    1: (200, "recorded", logging.INFO),
    2: (200, "duplicate", logging.INFO),
    0: (404, "token not bound to a job (yet)", logging.WARNING),
    -1: (409, "token bound to another job", logging.WARNING),
}


async def handle(state: _State, token: str | None, job_id: str | None) -> tuple[int, str]:
    """Check one callback and record it; return ``(HTTP status, short reason)``. Never raises."""
    state.refresh()
    settings = state.settings
    if settings is None or state.store_url is None:
        return 503, "callbacks are not configured on this server"
    if not token or not job_id or not callbacks.JOB_ID_RE.fullmatch(job_id):
        return 400, "token and job_id are required"
    try:
        claims = callbacks.verify_token(token, settings.keys)
    except callbacks.InvalidToken as err:
        log.warning("Refused a Kakao Pose callback for job %s: %s", job_id, err)
        return 403, str(err)
    ttl = max(min(int(claims.expires - time.time()), callbacks.MARKER_TTL_S), 1)
    try:
        keys = callbacks.record_keys(claims.nonce, job_id)
        answer = int(await state.client().eval(callbacks.RECORD_SCRIPT, 3, *keys, job_id, ttl, callbacks.EARLY_TTL_S))
    except Exception as err:
        log.warning("Kakao Pose callback for job %s not recorded: Redis unavailable (%s)", job_id, type(err).__name__)
        return 503, "store unavailable"
    status, reason, level = _OUTCOMES.get(answer, (500, "unexpected answer from the store", logging.ERROR))
    log.log(level, "Kakao Pose callback for job %s: %s", job_id, reason)
    return status, reason


def create_app() -> Any:
    """The FastAPI app (no OpenAPI schema, no docs pages: nothing to browse on an unauthenticated route)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="Kakao Pose callbacks", openapi_url=None, docs_url=None, redoc_url=None)
    state = _State()

    # Both in the query (the service appends job_id to the URL), for GET (its sample) and POST (its prose).
    @app.api_route(callbacks.ROUTE, methods=["GET", "POST"], include_in_schema=False, response_model=None)
    async def job_ended(token: str | None = None, job_id: str | None = None) -> Any:
        status, reason = await handle(state, token, job_id)
        return JSONResponse({"status": reason}, status_code=status)

    app.state.kakao_pose = state
    return app
