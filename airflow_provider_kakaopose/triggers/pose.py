"""Trigger that waits for a Pose video job in the triggerer, without holding a worker slot."""

from __future__ import annotations

import asyncio
import contextlib
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


class KakaoPoseJobTrigger(BaseTrigger):
    """Poll ``GET /pose/job/{job_id}`` until the job ends or ``end_time`` passes; fire exactly one event.

    :param job_id: the video job to wait for.
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (looked up asynchronously in the triggerer).
    :param poll_interval: seconds between status checks.
    :param end_time: absolute deadline, seconds since the epoch (UTC); a re-created trigger keeps it.

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
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self.job_id = job_id
        self.kakao_pose_conn_id = kakao_pose_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "kakao_pose_conn_id": self.kakao_pose_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        payload: dict[str, Any] | None = None
        try:
            async with KakaoPoseAsyncHook(self.kakao_pose_conn_id) as hook:
                payload = await self._poll_until_the_end(hook)
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
