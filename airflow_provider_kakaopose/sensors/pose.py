"""Sensor that waits for a Pose video job to finish: poke, reschedule or deferrable."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_kakaopose._compat import AirflowSensorTimeout, AirflowSkipException, BaseSensorOperator
from airflow_provider_kakaopose.exceptions import KakaoPoseError
from airflow_provider_kakaopose.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_kakaopose.jobs import job_finished, job_id_from_event
from airflow_provider_kakaopose.operators._inputs import default_deferrable

if TYPE_CHECKING:
    from airflow_provider_kakaopose._compat import Context
    from airflow_provider_kakaopose._waitlog import WaitLog
    from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook


def raise_for_job(job_id: str, body: dict) -> bool:
    """Deprecated: :func:`airflow_provider_kakaopose.jobs.job_finished` (the same answer under a name that says
    it returns whether the job succeeded)."""
    warnings.warn(
        "raise_for_job is deprecated: use airflow_provider_kakaopose.jobs.job_finished",
        DeprecationWarning,
        stacklevel=2,
    )
    return job_finished(job_id, body)


def raise_for_event(event: dict[str, Any]) -> str:
    """Deprecated: :func:`airflow_provider_kakaopose.jobs.job_id_from_event` (with ``AirflowSensorTimeout`` for
    a ``timeout`` event, as here)."""
    warnings.warn(
        "raise_for_event is deprecated: use airflow_provider_kakaopose.jobs.job_id_from_event",
        DeprecationWarning,
        stacklevel=2,
    )
    return job_id_from_event(event, timeout_error=AirflowSensorTimeout)


class KakaoPoseJobSensor(BaseSensorOperator):
    """Wait until a Pose video job is ``success``.

    :param job_id: the job to wait for (templated), e.g. ``"{{ ti.xcom_pull('submit') }}"``.
    :param kakao_pose_conn_id: the ``kakao_pose`` connection (templated).
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to the
        ``[operators] default_deferrable`` setting. The sensor checks once, then defers with an absolute
        deadline of now + ``timeout``.

    Works in ``poke`` and ``reschedule`` modes too, with the same outcomes in all three modes:

    - ``success``: the task succeeds;
    - ``failed`` raises :class:`KakaoPoseJobFailedError` with the service's description, ``not found`` raises
      :class:`KakaoPoseJobNotFoundError`, and a polling error that outlasts the hook's retries raises its
      :class:`KakaoPoseError`: the task FAILS (Airflow's ``retries`` apply), even with ``soft_fail=True``;
    - running past ``timeout`` is the sensor's usual ``AirflowSensorTimeout``, the one outcome ``soft_fail``
      turns into SKIPPED (``never_fail`` keeps Airflow's meaning: skip on any failure).

    Each status check reads only the job's status (the body is scanned in chunks, never held), and one
    hook (one HTTP session) serves all the pokes of a try. In ``poke`` mode the status is logged when it
    changes and otherwise every third poke, never more often than every 10 s
    (:class:`~airflow_provider_kakaopose._waitlog.WaitLog`); in ``reschedule`` mode each poke logs it.
    """

    template_fields: Sequence[str] = ("job_id", "kakao_pose_conn_id")
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
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self._pose_hook: KakaoPoseHook | None = None
        self._wait: WaitLog | None = None

    @property
    def hook(self) -> KakaoPoseHook:
        """The hook of this try: made on the first poke, closed when the try ends (or defers)."""
        if self._pose_hook is None:
            from airflow_provider_kakaopose.hooks.pose import KakaoPoseHook

            self._pose_hook = KakaoPoseHook(self.kakao_pose_conn_id)
        return self._pose_hook

    def poke(self, context: Context) -> bool:
        body = self.hook.get_job_status(self.job_id)
        if self._wait is not None:  # poke mode: a steady rhythm, not a line per poke
            self._wait.log(str(body.get("status")))
        else:  # reschedule mode (each poke its own short run) and the deferrable mode's first check
            self.log.info("Pose job %s is %s", self.job_id, body.get("status"))
        return job_finished(self.job_id, body)

    def execute(self, context: Context) -> Any:
        try:
            if not self.deferrable:
                if self.mode == "poke":
                    from airflow_provider_kakaopose._waitlog import WaitLog

                    self._wait = WaitLog(self.log, self.job_id, time.time() + self.timeout, self.poke_interval)
                return super().execute(context)
            if self.poke(context):
                return None
        finally:
            self._wait = None
            if self._pose_hook is not None:
                self._pose_hook.close()
                self._pose_hook = None
        from airflow_provider_kakaopose.triggers.pose import KakaoPoseJobTrigger

        nonce = self._callback_nonce()
        self.defer(
            trigger=KakaoPoseJobTrigger(
                job_id=self.job_id,
                kakao_pose_conn_id=self.kakao_pose_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
                callback=nonce is not None,
                callback_nonce=nonce,
                waiting_since=time.time(),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + 60),  # the trigger reports its own deadline first
        )

    def _callback_nonce(self) -> str | None:
        """The nonce of the job's callback when it was submitted with the provider's (by a video operator in
        this deployment): then the deferred wait listens for it (docs/callbacks.md); else ``None`` (it polls)."""
        from airflow_provider_kakaopose import callbacks
        from airflow_provider_kakaopose._compat import AIRFLOW_V_3_0_PLUS
        from airflow_provider_kakaopose.hooks._shared_quota import configured_store

        store = configured_store()
        if not AIRFLOW_V_3_0_PLUS or store is None or callbacks.configured_callbacks() is None:
            return None
        try:
            nonce = callbacks.callback_nonce_of(store, self.job_id)
        except Exception as err:
            self.log.warning("Could not tell whether job %s calls back (%s): polling", self.job_id, type(err).__name__)
            return None
        if nonce is not None:
            self.log.info("Pose job %s will call back when it ends; the wait listens for it", self.job_id)
        return nonce

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """Resume after the trigger fired: return on success, raise the matching error otherwise (also for a
        missing or malformed event)."""
        job_id_from_event(event, timeout_error=AirflowSensorTimeout)
        self.log.info("Pose job %s succeeded", self.job_id)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow's sensor turns *any* error after a deferral into a skip under ``soft_fail``; poke and
        reschedule modes skip only on a timeout. Keep that one meaning in every mode: a failed or missing
        job, or a polling error, fails the task."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSkipException as skip:
            cause = skip.__cause__
            if self.soft_fail and isinstance(cause, KakaoPoseError):
                raise cause from None
            raise
        except AirflowSensorTimeout as timeout:  # Airflow 3.0 turns a deferral timeout into this past soft_fail
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail: {timeout}") from timeout
            raise
