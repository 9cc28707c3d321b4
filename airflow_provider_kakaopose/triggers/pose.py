"""Trigger that waits for a Pose video job in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp  # noqa: F401  (imported with the trigger class: a first import on the event loop stalls it ~0.25 s)
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_kakaopose._waitlog import WaitLog
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_kakaopose.hooks.pose import KakaoPoseAsyncHook
from airflow_provider_kakaopose.jobs import EVENT_ERROR, EVENT_TIMEOUT, ended_job_event, job_event

# The shared quota's client likewise (~60 ms, else paid by the first trigger's first poll); [redis] is optional.
# Only the triggerer imports this module: operators and sensors import it lazily, so DAG parsing does not pay.
with contextlib.suppress(ImportError):
    import redis.asyncio  # noqa: F401


#: A listening trigger that starts this long after its wait began was started again (a triggerer died).
RESTART_AFTER_S = 15.0


class KakaoPoseJobTrigger(BaseTrigger):
    """Poll ``GET /pose/job/{job_id}`` until the job ends or ``end_time`` passes; fire exactly one event.

    :param job_id: the video job to wait for.
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (looked up asynchronously in the triggerer).
    :param poll_interval: seconds between status checks.
    :param end_time: absolute deadline, seconds since the epoch (UTC); a re-created trigger keeps it.
    :param callback: the job was submitted with the provider's signed callback URL: wait for its wake-up
        (:mod:`~airflow_provider_kakaopose.triggers._wakeups`, one Redis subscription per triggerer loop) and
        confirm with one status GET, instead of polling every ``poll_interval``.
    :param callback_nonce: with ``callback``: the nonce of the job's callback token (not a secret: the token's
        signature is not kept), bound to the job again when the trigger starts and after Redis comes back.
    :param callback_poll_interval: with ``callback``: seconds between fallback polls (for a callback the
        service lost), each spread by jitter (75-100 %); default ``[kakao_pose] callback_poll_interval`` (300).
    :param waiting_since: with ``callback``: when the wait began (seconds since the epoch). A trigger started
        again later (its triggerer died) checks the job once right away: a callback lost while nobody listened
        (dropped by the service, or its marker lost with Redis) then costs no more than the time it was homeless,
        instead of a fallback interval counted again from the restart.

    The status is logged at INFO when it changes and otherwise every third poll, never more often than every
    10 s and at least once a minute (:class:`~airflow_provider_kakaopose._waitlog.WaitLog`): ``Pose job … is
    processing: waited 1 m 40 s, deadline 2026-01-01T10:00:00Z (in 28 m 20 s)``.

    The event's payload is ``{"status": "success" | "failed" | "not found" | "timeout" | "error",
    "job_id": ..., "message": ...}`` (an ``error`` also names the ``error_type``; built and read by
    :mod:`airflow_provider_kakaopose.jobs`) — never the result itself
    (which can be hundreds of MB): the operator fetches it in the worker. Each poll reads the body in chunks
    through a status scanner and keeps none of it, so a finished job's large result never blocks the event
    loop or sits in the triggerer's memory.
    Only ids and settings are serialized; the key stays in the connection.
    """

    def __init__(
        self,
        job_id: str,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 10.0,
        end_time: float | None = None,
        callback: bool = False,
        callback_poll_interval: float | None = None,
        callback_nonce: str | None = None,
        waiting_since: float | None = None,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        if callback_poll_interval is not None and callback_poll_interval <= 0:
            raise ValueError(f"callback_poll_interval must be positive, not {callback_poll_interval!r}")
        self.job_id = job_id
        self.kakao_pose_conn_id = kakao_pose_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.callback = bool(callback)
        self.callback_poll_interval = float(callback_poll_interval) if callback_poll_interval is not None else None
        self.callback_nonce = callback_nonce
        self.waiting_since = float(waiting_since) if waiting_since is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "kakao_pose_conn_id": self.kakao_pose_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "callback": self.callback,
                "callback_poll_interval": self.callback_poll_interval,
                "callback_nonce": self.callback_nonce,
                "waiting_since": self.waiting_since,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        payload: dict[str, Any] | None = None
        try:
            async with KakaoPoseAsyncHook(self.kakao_pose_conn_id) as hook:
                listener = self._listener() if self.callback else None
                if listener is None:
                    payload = await self._poll_until_the_end(hook)
                else:
                    payload = await self._wait_for_the_callback(hook, listener)
        except Exception as err:
            if payload is None:  # error_type: so the worker raises the same class
                payload = job_event(
                    EVENT_ERROR, self.job_id, f"Polling job {self.job_id} failed: {err}", type(err).__name__
                )
            else:  # the job's outcome is known: a failure to close the session does not change it
                self.log.warning("Closing the session after polling job %s failed: %s", self.job_id, err)
        yield TriggerEvent(payload)

    async def _poll_until_the_end(self, hook: KakaoPoseAsyncHook) -> dict[str, Any]:
        """Poll until the job ends or the deadline passes; return the event's payload."""
        wait = WaitLog(self.log, self.job_id, self.end_time, self.poll_interval)
        while True:
            body = await hook.get_job_status(self.job_id)  # never the result itself
            status = body["status"]
            wait.log(status)  # INFO at a steady rhythm, not at every poll
            ended = ended_job_event(self.job_id, body)
            if ended is not None:
                return ended
            remaining = self.end_time - time.time() if self.end_time is not None else None
            if remaining is not None and remaining <= 0:
                return job_event(EVENT_TIMEOUT, self.job_id, f"Job {self.job_id} was still {status} at the deadline")
            delay = self.poll_interval if remaining is None else min(self.poll_interval, remaining)
            await asyncio.sleep(delay)

    def _started_again(self) -> bool:
        """Whether this trigger runs again long after its wait began (its first triggerer died)."""
        if self.waiting_since is None:
            return False
        late = time.time() - self.waiting_since
        if late < RESTART_AFTER_S:
            return False
        self.log.info(
            "Pose job %s: waiting for its callback again after %.0f s: checking the job once", self.job_id, late
        )
        return True

    def _listener(self) -> Any:
        """The loop's shared callback listener, or ``None`` (then the wait polls every ``poll_interval``)."""
        from airflow_provider_kakaopose.hooks._shared_quota import configured_store

        url = configured_store()
        if url is None or "redis.asyncio" not in sys.modules:
            self.log.warning(
                "Job %s asked for a callback, but this triggerer has no usable [kakao_pose] rate_limit_store: "
                "polling every %g s",
                self.job_id,
                self.poll_interval,
            )
            return None
        from airflow_provider_kakaopose.triggers._wakeups import listener_for

        return listener_for(url)

    async def _wait_for_the_callback(self, hook: KakaoPoseAsyncHook, listener: Any) -> dict[str, Any]:
        """Wait for the job's wake-up (or a fallback poll), confirm with one status GET; the event's payload."""
        from airflow_provider_kakaopose.callbacks import EXPIRY_MARGIN_S, configured_poll_interval

        interval = self.callback_poll_interval or configured_poll_interval()
        wait = WaitLog(self.log, self.job_id, self.end_time, interval)
        expires = self.end_time + EXPIRY_MARGIN_S if self.end_time is not None else None
        woken = await listener.watch(self.job_id, self.callback_nonce, expires)
        self.log.info("Waiting for the callback of Pose job %s (fallback poll about every %g s)", self.job_id, interval)
        check_now = self._started_again()
        try:
            while True:
                remaining = self.end_time - time.time() if self.end_time is not None else None
                delay = 0.0 if check_now else interval * random.uniform(0.75, 1.0)
                check_now = False
                if remaining is not None:
                    delay = max(min(delay, remaining), 0.0)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woken.wait(), delay)
                called_back = woken.is_set()
                body = await hook.get_job_status(self.job_id)  # the callback is a hint: the service decides
                wait.log(body["status"])
                ended = ended_job_event(self.job_id, body)
                if ended is not None:
                    return ended
                if called_back:
                    self.log.info("Pose job %s was called back but is still %s", self.job_id, body["status"])
                    woken.clear()
                if self.end_time is not None and self.end_time - time.time() <= 0:
                    return job_event(
                        EVENT_TIMEOUT, self.job_id, f"Job {self.job_id} was still {body['status']} at the deadline"
                    )
        finally:
            listener.unwatch(self.job_id, woken)
