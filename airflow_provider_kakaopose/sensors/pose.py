"""Sensor that waits for a Pose video job to finish: poke, reschedule or deferrable."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_kakaopose.exceptions import (
    KakaoPoseError,
    KakaoPoseJobFailedError,
    KakaoPoseJobNotFoundError,
)
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context


def raise_for_job(job_id: str, body: dict) -> bool:
    """True when the job succeeded, False while it runs; raise when it failed or is not found."""
    status = body.get("status")
    if status == "success":
        return True
    if status == "failed":
        raise KakaoPoseJobFailedError(
            f"Pose job {job_id} failed: {body.get('description') or 'no description given'}",
            msg=body.get("description"),
        )
    if status == "not found":
        raise KakaoPoseJobNotFoundError(f"Pose job {job_id} is not found (unknown id, or older than 7 days)")
    return False


def raise_for_event(event: dict[str, Any]) -> str:
    """Turn a :class:`~airflow_provider_kakaopose.triggers.pose.KakaoPoseJobTrigger` event into the job id
    (on success) or the matching exception."""
    status, job_id, message = event.get("status"), event.get("job_id"), event.get("message", "")
    if status == "success":
        return job_id
    if status == "failed":
        raise KakaoPoseJobFailedError(message)
    if status == "not found":
        raise KakaoPoseJobNotFoundError(message)
    if status == "timeout":
        raise AirflowSensorTimeout(message)
    raise KakaoPoseError(message or f"Unexpected trigger event {event!r}")


class KakaoPoseJobSensor(BaseSensorOperator):
    """Wait until a Pose video job is ``success``.

    :param job_id: the job to wait for (templated), e.g. ``"{{ ti.xcom_pull('submit') }}"``.
    :param kakao_pose_conn_id: the ``kakao_pose`` connection.
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to the
        ``[operators] default_deferrable`` setting. The sensor checks once, then defers with an absolute
        deadline of now + ``timeout``.

    Works in ``poke`` and ``reschedule`` modes too. ``failed`` raises :class:`KakaoPoseJobFailedError` with
    the service's description; ``not found`` raises :class:`KakaoPoseJobNotFoundError`; running past
    ``timeout`` is the sensor's usual ``AirflowSensorTimeout``.
    """

    template_fields: Sequence[str] = ("job_id",)
    ui_color = "#fee500"

    def __init__(
        self,
        *,
        job_id: str,
        kakao_pose_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.kakao_pose_conn_id = kakao_pose_conn_id
        self.deferrable = (
            conf.getboolean("operators", "default_deferrable", fallback=False) if deferrable is None else deferrable
        )

    def _hook(self):
        from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

        return KakaoPoseHook(self.kakao_pose_conn_id)

    def poke(self, context: Context) -> bool:
        body = self._hook().get_job(self.job_id)
        self.log.info("Pose job %s is %s", self.job_id, body.get("status"))
        return raise_for_job(self.job_id, body)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

        self.defer(
            trigger=KakaoPoseJobTrigger(
                job_id=self.job_id,
                kakao_pose_conn_id=self.kakao_pose_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 60),  # the trigger reports its own deadline first
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        """Resume after the trigger fired: return on success, raise the matching error otherwise."""
        raise_for_event(event)
        self.log.info("Pose job %s succeeded", self.job_id)
